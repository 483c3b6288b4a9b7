"""PITBatchNorm1d: a BatchNorm1d that could not be folded into its producer."""
import torch.nn as nn

from plinio.methods.pit.nn.batchnorm_common import PITBatchNormBase


class PITBatchNorm1d(PITBatchNormBase):
    """BatchNorm1d following its producer's channel mask."""

    plain_type = nn.BatchNorm1d

    def __init__(self, bn: nn.BatchNorm1d) -> None:
        super().__init__(bn)
