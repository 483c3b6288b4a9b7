"""Names survive export (docs/behaviour.md §6): a TCN written the PLiNIO way, with explicit
causal paddings before its convolutions, keeps every module's qualified name and type; the
paddings keep their module (or their ``F.pad`` call) with the padding of the pruned conv."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from plinio.methods import PIT


class TemporalBlock(nn.Module):
    """pad1 -> tcn1 -> BN -> ReLU -> pad2 (module or F.pad) -> tcn2 -> ReLU, plus a residual."""

    def __init__(self, cin: int, cout: int, k: int, d: int, functional_pad: bool) -> None:
        super().__init__()
        self.causal = (k - 1) * d
        self.pad1 = nn.ConstantPad1d((self.causal, 0), 0)
        self.tcn1 = nn.Conv1d(cin, cout, k, dilation=d)
        self.bn1 = nn.BatchNorm1d(cout)
        self.relu1 = nn.ReLU()
        self.functional_pad = functional_pad
        self.pad2 = None if functional_pad else nn.ZeroPad1d((self.causal, 0))
        self.tcn2 = nn.Conv1d(cout, cout, k, dilation=d)
        self.relu2 = nn.ReLU()
        self.downsample = nn.Conv1d(cin, cout, 1) if cin != cout else None
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu1(self.bn1(self.tcn1(self.pad1(x))))
        y = F.pad(y, (self.causal, 0)) if self.functional_pad else self.pad2(y)
        y = self.relu2(self.tcn2(y))
        res = x if self.downsample is None else self.downsample(x)
        return self.relu(y + res)


class TemporalConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        specs = [(3, 6, 3, 1, False), (6, 6, 5, 2, True), (6, 8, 9, 1, False)]
        self.network = nn.Sequential(*(TemporalBlock(*spec) for spec in specs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


class TCN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tcn = TemporalConvNet()
        self.out = nn.Linear(8 * 20, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.flatten(self.tcn(x), 1))


def _search(seed: int = 0) -> PIT:
    torch.manual_seed(seed)
    model = TCN()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return PIT(model, input_shape=(3, 20))


def _randomize(pit: PIT, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in pit.named_nas_parameters():
            p.copy_(torch.rand(p.shape, generator=gen))


def _blocks(model: nn.Module):
    return [model.get_submodule(f"tcn.network.{i}") for i in range(3)]


def test_untouched_search_exports_the_users_modules_unchanged():
    pit = _search()
    exported = pit.arch_export(add_bn=False)
    original = dict(TCN().named_modules())
    got = dict(exported.named_modules())
    for name, module in original.items():
        if list(module.children()) or isinstance(module, nn.BatchNorm1d):
            continue  # containers are traced through; BN is folded (re-inserted only with add_bn)
        assert name in got and type(got[name]) is type(module), name
    for block, expected in zip(_blocks(exported), (2, 8, 8)):
        assert block.pad1.padding == (expected, 0) and block.tcn1.padding == (0,)
    assert not [name for name in got if "_exported_pad" in name]


@pytest.mark.parametrize("seed", range(6))
def test_pruned_taps_and_dilation_rewrite_the_users_paddings(seed):
    pit = _search(seed)
    _randomize(pit, seed)
    pit.eval()
    exported = pit.arch_export(add_bn=False).eval()
    names = dict(exported.named_modules())
    assert not [name for name in names if "_exported_pad" in name]
    pruned_time = 0
    for i, block in enumerate(_blocks(exported)):
        for conv_name in ("tcn1", "tcn2"):
            layer = pit.seed.get_submodule(f"tcn.network.{i}.{conv_name}")
            conv = getattr(block, conv_name)
            assert type(conv) is nn.Conv1d
            assert conv.kernel_size == layer.kernel_size_opt and conv.dilation == layer.dilation_opt
            assert conv.padding == (0,)
            pruned_time += conv.kernel_size != layer.kernel_size or conv.dilation != layer.dilation
        causal1 = (block.tcn1.kernel_size[0] - 1) * block.tcn1.dilation[0]
        assert type(block.pad1) is nn.ConstantPad1d and block.pad1.padding == (causal1, 0)
        causal2 = (block.tcn2.kernel_size[0] - 1) * block.tcn2.dilation[0]
        if hasattr(block, "pad2"):
            assert type(block.pad2) is nn.ZeroPad1d and block.pad2.padding == (causal2, 0)
        else:
            pads = [n for n in exported.graph.nodes if n.op == "call_function" and n.target is F.pad]
            assert [list(n.args[1]) for n in pads] == [[causal2, 0]]
    assert pruned_time > 0  # the random masks did prune taps / raise the dilation
    x = torch.randn(4, 3, 20)
    with torch.no_grad():
        expected = pit(x)
        got = exported(x)
    assert float((got - expected).abs().max()) <= 1e-4 * float(expected.abs().max())


def test_searched_model_is_untouched_by_export():
    pit = _search()
    _randomize(pit, 1)
    before = [m.padding for m in pit.seed.modules() if isinstance(m, nn.ConstantPad1d)]
    pit.arch_export()
    assert [m.padding for m in pit.seed.modules() if isinstance(m, nn.ConstantPad1d)] == before


class PadThenPaddedConv(nn.Module):
    """A user padding in front of a conv that pads too, and a padding used twice."""

    def __init__(self, k: int, conv_padding) -> None:
        super().__init__()
        self.pad = nn.ConstantPad1d((2, 1), 0.0)
        self.conv = nn.Conv1d(2, 4, k, padding=conv_padding)
        self.shared = nn.ConstantPad1d((4, 0), 0.0)
        self.conv_a = nn.Conv1d(4, 4, 5)
        self.conv_b = nn.Conv1d(4, 4, 5)
        self.head = nn.Conv1d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(self.pad(x)))
        y = torch.relu(self.conv_a(self.shared(y)) + self.conv_b(self.shared(y)))
        return self.head(y)


# (kernel, conv padding, exported conv padding, exported user padding) when the last 2 taps
# are kept: the total padding is the user's (2, 1) plus the conv's, minus K - 2 on the left
SPLITS = [(3, 1, (1,), (1, 1)), (3, "same", "same", (2, 1)), (3, 0, (0,), (1, 1)),
          (5, 2, (0,), (1, 3)), (5, "same", "same", (1, 2)), (5, 0, (0,), (-1, 1))]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("k, conv_padding, conv_expected, pad_expected", SPLITS)
def test_conv_keeps_its_own_padding_when_the_users_padding_can_take_the_rest(k, conv_padding, conv_expected,
                                                                              pad_expected):
    pit = PIT(PadThenPaddedConv(k, conv_padding), input_shape=(2, 12))
    beta = torch.zeros(k)
    beta[-2] = 0.7  # θ_β = (0, ..., 0.7, 1.7): the last two taps
    with torch.no_grad():
        pit.seed.conv.timestep_masker.beta.copy_(beta)
        pit.seed.conv_a.timestep_masker.beta.copy_(torch.tensor([0.0, 0.0, 0.0, 0.7, 0.0]))
    pit.eval()
    exported = pit.arch_export(add_bn=False).eval()
    assert exported.conv.kernel_size == (2,)
    assert exported.conv.padding == conv_expected and exported.pad.padding == pad_expected
    # the shared padding is used twice: unchanged, the pruned conv gets a padding of its own
    assert exported.shared.padding == (4, 0)
    assert type(exported.get_submodule("conv_a_exported_pad")) is nn.ConstantPad1d
    x = torch.randn(3, 2, 12)
    with torch.no_grad():
        assert torch.allclose(exported(x), pit(x), atol=1e-5)


@pytest.mark.parametrize("conv_padding", [2, "same"])
def test_unpruned_conv_keeps_its_padding_and_the_users_padding(conv_padding):
    exported = PIT(PadThenPaddedConv(5, conv_padding), input_shape=(2, 12)).arch_export(add_bn=False)
    assert exported.conv.padding == (conv_padding if conv_padding == "same" else (2,))
    assert exported.pad.padding == (2, 1)
