"""The channel rules of the conversion (plinio.graph.channel_rules) against PyTorch itself: an
op between two layers may carry the first layer's mask (its pruned channels stay exactly 0)
only if it maps 0 to 0 with the arguments it is called with; otherwise the first layer's
mask is frozen (it keeps every channel). If a rule claimed a mask carried wrongly, the export
(which drops the second layer's columns of the pruned channels) and sparse execution (which
skips them) would both differ from the search model."""
import warnings
from typing import Callable, Dict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from plinio.methods import PIT

# op applied between the layers -> whether it maps 0 to 0 (the mask may be shared across it)
OPS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "F.hardtanh()": lambda y: F.hardtanh(y),
    "F.hardtanh(0, 1)": lambda y: F.hardtanh(y, 0.0, 1.0),
    "F.hardtanh(0.5, 1)": lambda y: F.hardtanh(y, 0.5, 1.0),
    "F.hardtanh(min_val=-2, max_val=-1)": lambda y: F.hardtanh(y, min_val=-2.0, max_val=-1.0),
    "F.threshold(0, 0)": lambda y: F.threshold(y, 0.0, 0.0),
    "F.threshold(-0.1, 3)": lambda y: F.threshold(y, -0.1, 3.0),
    "F.threshold(0.1, 3)": lambda y: F.threshold(y, 0.1, 3.0),
    "torch.clamp(min=0)": lambda y: torch.clamp(y, min=0.0),
    "torch.clamp(-1, 1)": lambda y: torch.clamp(y, -1.0, 1.0),
    "torch.clamp(min=0.5)": lambda y: torch.clamp(y, min=0.5),
    "torch.clip(max=-0.5)": lambda y: torch.clip(y, max=-0.5),
    "y.clamp(0, 6)": lambda y: y.clamp(0.0, 6.0),
    "y.clamp(min=1)": lambda y: y.clamp(min=1.0),
    "y.clip(-1, 2)": lambda y: y.clip(-1.0, 2.0),
    "torch.abs": torch.abs,
    "y.abs()": lambda y: y.abs(),
    "nn.Hardtanh(0.5, 1)": nn.Hardtanh(0.5, 1.0),
    "nn.Threshold(0.1, 3)": nn.Threshold(0.1, 3.0),
    "nn.MaxPool2d(3, 1, 1)": nn.MaxPool2d(3, 1, 1),
    "F.avg_pool2d(3, 1, 1)": lambda y: F.avg_pool2d(y, 3, 1, 1),
    "nn.Dropout(0.3)": nn.Dropout(0.3),
    # in training, alpha dropouts map 0 to a nonzero value
    "nn.AlphaDropout(0.3)": nn.AlphaDropout(0.3),
    "nn.FeatureAlphaDropout(0.3)": nn.FeatureAlphaDropout(0.3),
    "F.rrelu": lambda y: F.rrelu(y),
    "torch.square": torch.square,
    "y.square()": lambda y: y.square(),
    "y ** 2": lambda y: y ** 2,
    "y ** 3": lambda y: y ** 3,
    "torch.pow(y, 2)": lambda y: torch.pow(y, 2),
    "y.pow(1)": lambda y: y.pow(1),
    "y ** 0": lambda y: y ** 0,
    "y ** -1": lambda y: y ** -1,
    "torch.exp": torch.exp,
    "y.exp()": lambda y: y.exp(),
    "F.instance_norm": lambda y: F.instance_norm(y),
    "F.instance_norm(bias)": lambda y: F.instance_norm(y, weight=torch.ones(4), bias=torch.full((4,), 0.5)),
}

# ops that map 0 to 0 but mix channels: the kept channels' values depend on the pruned ones'
# positions, which the export removes, so the layer before them keeps every channel
MIXING: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "F.local_response_norm(2)": lambda y: F.local_response_norm(y, 2),
    "F.glu": lambda y: torch.cat([F.glu(y, 1)] * 2, 1),
    "F.pixel_shuffle": lambda y: F.pixel_unshuffle(F.pixel_shuffle(y, 2), 2),
}


class _TwoLayers(nn.Module):
    def __init__(self, op: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.op = op
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(self.op(self.a(x))).mean(dim=(2, 3)))


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("sparse", [False, True])
def test_an_op_carries_the_mask_only_if_it_maps_zero_to_zero(name: str, sparse: bool) -> None:
    op = OPS[name]
    if isinstance(op, nn.Module):
        op.train()  # as a search trains it (a previous case may have left it in eval mode)
    keeps_zero = bool((op(torch.zeros(1, 4, 2, 2)) == 0).all())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search = PIT(_TwoLayers(op), input_shape=(3, 6, 6), sparse=sparse)
    masker = search.seed.a.out_features_masker
    assert masker.frozen != keeps_zero
    if keeps_zero:
        with torch.no_grad():
            masker.alpha.copy_(torch.tensor([0.0, 1.0, 0.0, 1.0]))
    search.eval()
    exported = search.arch_export(add_bn=False).eval()
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = _TwoLayers(op).eval()
        expected.load_state_dict({k: v for k, v in search.seed.state_dict().items()
                                  if k.split(".")[-1] in ("weight", "bias")}, strict=False)
        if keeps_zero:  # the mask prunes channels 0 and 2
            expected.a.weight[[0, 2]] = 0.0
            expected.a.bias[[0, 2]] = 0.0
        want = expected(x)
        torch.testing.assert_close(search(x), want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(exported(x), want, rtol=1e-5, atol=1e-6)
    assert exported.a.out_channels == exported.b.in_channels == (2 if keeps_zero else 4)


@pytest.mark.parametrize("dropout", [F.alpha_dropout, F.feature_alpha_dropout])
def test_functional_alpha_dropouts_stop_the_mask(dropout: Callable[..., torch.Tensor]) -> None:
    """In training an alpha dropout maps 0 to a nonzero value (its affine correction), so the
    layer before it keeps every channel (a traced call's training flag is a constant, so the
    values are not compared in eval mode as above)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search = PIT(_TwoLayers(lambda y: dropout(y, 0.3, True)), input_shape=(3, 6, 6))
    assert search.seed.a.out_features_masker.frozen
    assert not search.seed.b.out_features_masker.frozen


@pytest.mark.parametrize("name", sorted(MIXING))
def test_an_op_mixing_channels_stops_the_mask(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search = PIT(_TwoLayers(MIXING[name]), input_shape=(3, 6, 6))
    assert search.seed.a.out_features_masker.frozen
    assert not search.seed.b.out_features_masker.frozen
    search.eval()
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(search.arch_export(add_bn=False).eval()(x), search(x), rtol=1e-5, atol=1e-6)
