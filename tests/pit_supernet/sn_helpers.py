"""Helpers shared by the PIT-SuperNet tests."""
import torch

from plinio.methods import PITSuperNet


def randomize_architecture(search: PITSuperNet, seed: int) -> None:
    """Random α (normal) and random PIT mask parameters (uniform in [0, 1): some pruned)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in search.named_nas_parameters():
            if name.endswith("sn_combiner.alpha"):
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.rand(p.shape, generator=gen))
