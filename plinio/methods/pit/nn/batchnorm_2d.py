"""PITBatchNorm2d: a BatchNorm2d that could not be folded into its producer."""
import torch.nn as nn

from plinio.methods.pit.nn.batchnorm_common import PITBatchNormBase


class PITBatchNorm2d(PITBatchNormBase):
    """BatchNorm2d following its producer's channel mask."""

    plain_type = nn.BatchNorm2d

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__(bn)
