"""scikit-learn's bundled handwritten digits as normalized tensors with a seeded split.

The 1797 scanned 8×8 digits ship inside scikit-learn, so the demo needs no download. They
are upsampled to 16×16 so that the CNN has two resolutions to work at (pooling in between),
which makes the MAC differences between the candidate blocks meaningful.
"""
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F

IMAGE_SIZE = 16
NUM_CLASSES = 10
TEST_FRACTION = 0.2
VAL_FRACTION = 0.15


@dataclass(frozen=True)
class Split:
    """Images ``(N, 1, IMAGE_SIZE, IMAGE_SIZE)`` float32 and labels ``(N,)`` int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device) -> "Split":
        """The same split on ``device``."""
        return Split(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True)
class DigitsData:
    """Train / validation / test splits (disjoint, stratified by class)."""

    train: Split
    val: Split
    test: Split

    @property
    def input_shape(self) -> Tuple[int, int, int]:
        """Shape of one image without the batch dimension."""
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    def to(self, device: torch.device) -> "DigitsData":
        """All splits on ``device``."""
        return DigitsData(self.train.to(device), self.val.to(device), self.test.to(device))


def load_digits_data(seed: int) -> DigitsData:
    """Load, split (stratified, seeded), upsample and standardize the digits.

    Standardization uses the training split's mean and standard deviation only, so no
    information from the held-out splits leaks into training.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                           align_corners=False)
    labels = torch.tensor(digits.target, dtype=torch.long)
    indices = list(range(len(labels)))
    rest, test_idx = train_test_split(indices, test_size=TEST_FRACTION, random_state=seed,
                                      stratify=labels.numpy())
    val_share = VAL_FRACTION / (1.0 - TEST_FRACTION)
    train_idx, val_idx = train_test_split(rest, test_size=val_share, random_state=seed,
                                          stratify=labels[rest].numpy())
    train_images = images[train_idx]
    mean, std = train_images.mean(), train_images.std()

    def make(idx: list) -> Split:
        return Split(((images[idx] - mean) / std).contiguous(), labels[idx].contiguous())

    return DigitsData(train=make(train_idx), val=make(val_idx), test=make(test_idx))


def iterate_batches(split: Split, batch_size: int,
                    generator: Optional[torch.Generator] = None
                    ) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of ``split``; shuffled with ``generator`` when one is given.

    The permutation is drawn on the CPU from the caller's generator, so the data order
    depends on the seed only (not on the device or on other random draws).
    """
    n = len(split)
    if generator is None:
        order = torch.arange(n)
    else:
        order = torch.randperm(n, generator=generator)
    order = order.to(split.labels.device)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield split.images[idx], split.labels[idx]


def batches_per_epoch(split: Split, batch_size: int) -> int:
    """Number of mini-batches ``iterate_batches`` yields for ``split``."""
    return -(-len(split) // batch_size)
