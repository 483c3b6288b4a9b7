"""The demo network: a small CNN whose three blocks are PIT-SuperNet choices.

Each searchable block offers a 3×3 conv, a 5×5 conv, a depthwise-separable 3×3 conv and,
where the block keeps its width, the identity (skip the block). Every branch ends with
BatchNorm and the ReLU is applied after the mix, so that the block is conv–BN–ReLU whatever
branch wins, and the linear branches of one block (conv 3×3, conv 5×5, identity) can be
merged into one convolution by plinio's exact fast path.
"""
from typing import Callable, Dict, Sequence, Tuple

import torch
import torch.nn as nn

from plinio.methods.pit_supernet import PITSuperNetModule

from .data import IMAGE_SIZE, NUM_CLASSES

BRANCH_KINDS: Tuple[str, ...] = ("conv3x3", "conv5x5", "dwsep3x3", "identity")
# (input channels, output channels) of the searchable blocks, in forward order
BLOCK_WIDTHS: Dict[str, Tuple[int, int]] = {
    "block1": (16, 16),
    "block2": (16, 32),
    "block3": (32, 32),
}
STEM_WIDTH = 16

BlockFactory = Callable[[str, int, int], nn.Module]


def conv_bn(in_channels: int, out_channels: int, kernel_size: int,
            groups: int = 1) -> nn.Sequential:
    """Stride-1 'same' convolution followed by BatchNorm (no bias: BN provides it)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                  groups=groups, bias=False),
        nn.BatchNorm2d(out_channels))


def block_kinds(in_channels: int, out_channels: int) -> Tuple[str, ...]:
    """Branch kinds a block of this shape offers (identity only when the width is kept)."""
    if in_channels == out_channels:
        return BRANCH_KINDS
    return tuple(kind for kind in BRANCH_KINDS if kind != "identity")


def make_branch(kind: str, in_channels: int, out_channels: int) -> nn.Module:
    """One candidate implementation of a block."""
    if kind == "conv3x3":
        return conv_bn(in_channels, out_channels, 3)
    if kind == "conv5x5":
        return conv_bn(in_channels, out_channels, 5)
    if kind == "dwsep3x3":
        return nn.Sequential(conv_bn(in_channels, in_channels, 3, groups=in_channels),
                             nn.ReLU(),
                             conv_bn(in_channels, out_channels, 1))
    if kind == "identity":
        if in_channels != out_channels:
            raise ValueError(f"identity branch needs equal widths, got {in_channels} -> "
                             f"{out_channels}")
        return nn.Identity()
    raise ValueError(f"unknown branch kind {kind!r}; choose one of {BRANCH_KINDS}")


class DigitsCNN(nn.Module):
    """stem (conv3×3–BN–ReLU) → block1 → maxpool → block2 → block3 → maxpool → linear.

    ``make_block(name, in_channels, out_channels)`` builds each searchable block, so the
    same skeleton gives the supernet (``supernet_cnn``) and any fixed choice (``plain_cnn``).
    """

    def __init__(self, make_block: BlockFactory) -> None:
        super().__init__()
        self.stem = conv_bn(1, STEM_WIDTH, 3)
        self.stem_act = nn.ReLU()
        self.block1 = make_block("block1", *BLOCK_WIDTHS["block1"])
        self.block1_act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.block2 = make_block("block2", *BLOCK_WIDTHS["block2"])
        self.block2_act = nn.ReLU()
        self.block3 = make_block("block3", *BLOCK_WIDTHS["block3"])
        self.block3_act = nn.ReLU()
        self.head_pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        head_positions = (IMAGE_SIZE // 4) ** 2
        self.classifier = nn.Linear(BLOCK_WIDTHS["block3"][1] * head_positions, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem(x))
        x = self.block1_act(self.block1(x))
        x = self.pool(x)
        x = self.block2_act(self.block2(x))
        x = self.block3_act(self.block3(x))
        return self.classifier(self.flatten(self.head_pool(x)))


def supernet_cnn() -> DigitsCNN:
    """The search space: every block is a ``PITSuperNetModule`` over ``block_kinds``."""
    def make_block(_name: str, cin: int, cout: int) -> nn.Module:
        return PITSuperNetModule([make_branch(kind, cin, cout)
                                  for kind in block_kinds(cin, cout)])
    return DigitsCNN(make_block)


def plain_cnn(choices: Dict[str, str]) -> DigitsCNN:
    """One point of the search space: ``choices`` maps each block name to a branch kind."""
    missing = set(BLOCK_WIDTHS) - set(choices)
    if missing:
        raise ValueError(f"plain_cnn: no branch kind given for {sorted(missing)}")
    return DigitsCNN(lambda name, cin, cout: make_branch(choices[name], cin, cout))


def branch_names(block: str) -> Sequence[str]:
    """Branch kinds of ``block`` in branch-index order (index i of the supernet)."""
    return block_kinds(*BLOCK_WIDTHS[block])


# the hand-picked baselines: one kind in every block (identity cannot: block2 widens)
FIXED_KINDS: Tuple[str, ...] = tuple(
    kind for kind in BRANCH_KINDS
    if all(kind in block_kinds(*widths) for widths in BLOCK_WIDTHS.values()))


def fixed_choice_cnn(kind: str) -> DigitsCNN:
    """The plain network with every block of kind ``kind`` (one of ``FIXED_KINDS``)."""
    if kind not in FIXED_KINDS:
        raise ValueError(f"fixed_choice_cnn: {kind!r} is not available in every block; "
                         f"choose one of {FIXED_KINDS}")
    return plain_cnn({block: kind for block in BLOCK_WIDTHS})
