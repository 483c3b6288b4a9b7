"""Put a search in its pruned regime: a seeded fraction of every channel mask below threshold.

The benchmark times the same search step at 0 %, 50 % and 75 % of the channels pruned. The
pruned channels are drawn once per mask name (seeded), so every variant of a workload
(plinio fast, plinio reference, the plain anchor) prunes the same channels; keep-alive
channels are never drawn, and a mask shared by several layers is one name, one draw.
"""
from typing import Dict, Mapping

import torch

from bench.plain_supernet import THRESHOLD, MaskSpec

PRUNED_ALPHA = 0.25  # below the 0.5 threshold, far enough that a few Adam steps keep it there


def pruned_count(spec: MaskSpec, fraction: float) -> int:
    """Channels of a mask to prune: round(fraction · channels), keep-alive channels excepted."""
    return min(round(fraction * spec.channels), spec.channels - spec.keep_alive)


def draw_pruned_channels(specs: Mapping[str, MaskSpec], fraction: float,
                         seed: int = 0) -> Dict[str, torch.Tensor]:
    """Mask name → indices of the channels to prune, drawn among the non-keep-alive ones."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"prune fraction must be in [0, 1], got {fraction}")
    drawn = {}
    for index, name in enumerate(sorted(specs)):
        spec = specs[name]
        generator = torch.Generator().manual_seed(seed * 100003 + index)
        candidates = torch.randperm(spec.channels - spec.keep_alive, generator=generator)
        drawn[name] = candidates[:pruned_count(spec, fraction)].sort().values
    return drawn


def prune(alphas: Mapping[str, torch.Tensor], channels: Mapping[str, torch.Tensor]) -> None:
    """Set the drawn channels of each mask α (by name) to a value below the threshold."""
    missing = sorted(set(channels) - set(alphas))
    if missing:
        raise KeyError(f"prune: masks {missing} are not among the model's channel masks")
    with torch.no_grad():
        for name, idx in channels.items():
            alphas[name][idx.to(alphas[name].device)] = PRUNED_ALPHA


def count_below_threshold(alphas: Mapping[str, torch.Tensor]) -> Dict[str, int]:
    """Mask name → number of channels whose |α| is at or below the binarization threshold."""
    return {name: int((alpha.detach().abs() <= THRESHOLD).sum()) for name, alpha in alphas.items()}
