"""The search-step benchmark at CI sizes (batch 2): its three searches and its options.

- pytest-benchmark timings of the three searches of every workload (plinio fast, the plain
  PyTorch anchor, plinio reference); before timing, all three must compute the same loss
  on the same batch (a benchmark of a wrong result is worthless). Compare them with
  ``pytest bench --benchmark-group-by=param:workload``.
- The plain anchor is the same search as plinio's: equal loss, regularizer and gradients
  for every parameter it has, with pruned channels and random architectural parameters.
- ``--prune F`` prunes the requested fraction of every channel mask, the same channels in
  every search; the script runs end to end with tiny settings.
"""
from typing import Callable, Dict

import pytest
import torch
import torch.nn as nn

from bench.channel_pruning import (PRUNED_ALPHA, count_below_threshold, draw_pruned_channels,
                                   pruned_count)
from bench.models import workloads
from bench.plain_from_plinio import channel_mask_specs, mask_plan
from bench.plain_supernet import LayerMasks, MaskSpec, PlainSearch, PlainSuperNet, TapMask
from bench.search_step import (VARIANTS, SearchSetup, build_setups, compiled, forward_loss,
                               loss_mismatch, main, mask_alphas, search_step)

WORKLOADS = sorted(workloads())


@pytest.fixture(scope="module")
def setups_of() -> Callable[[str], Dict[str, SearchSetup]]:
    """Workload name → {'fast', 'plain', 'reference'} setups, built once per module."""
    cache: Dict[str, Dict[str, SearchSetup]] = {}

    def get(name: str) -> Dict[str, SearchSetup]:
        if name not in cache:
            setups = build_setups(name, batch_size=2, device="cpu")
            mismatch = loss_mismatch(setups)
            assert mismatch is None, f"{name}: {mismatch}"
            cache[name] = setups
        return cache[name]

    return get


@pytest.mark.parametrize("path", VARIANTS)
@pytest.mark.parametrize("workload", WORKLOADS)
def test_search_step(benchmark, setups_of, workload, path):
    setup = setups_of(workload)[path]
    benchmark.group = workload
    benchmark.pedantic(search_step, args=(setup,), rounds=3, iterations=1, warmup_rounds=1)


def _supernet_alphas(search: nn.Module) -> Dict[str, nn.Parameter]:
    """Supernet name → its α, in a plinio wrapper or in the plain search."""
    if isinstance(search, PlainSearch):
        return {n: m.alpha for n, m in search.model.named_modules()
                if isinstance(m, PlainSuperNet)}
    return {n: m.sn_combiner.alpha for n, m in search.seed.named_modules()
            if hasattr(m, "sn_combiner")}


def _tap_parameters(search: nn.Module) -> Dict[str, nn.Parameter]:
    """'<Conv1d layer>.beta' / '.gamma' → its searched tap mask parameter."""
    if isinstance(search, PlainSearch):
        return {f"{n[:-len('.taps')]}.{attr}": getattr(m, attr)
                for n, m in search.model.named_modules() if n.endswith(".taps")
                for attr in ("beta", "gamma") if getattr(m, attr) is not None}
    kinds = {".timestep_masker.beta": ".beta", ".dilation_masker.gamma": ".gamma"}
    return {name[len("seed."):-len(suffix)] + short: p
            for name, p in search.named_nas_parameters()
            for suffix, short in kinds.items() if name.endswith(suffix) and p.numel() > 1}


def _randomize_architecture(setups: Dict[str, SearchSetup], seed: int) -> None:
    """The same random supernet α, random kept-channel α (|α| in (0.6, 1.4)) and random
    Conv1d tap β, γ (|·| in (0, 1.2), so that some taps are dropped) everywhere."""
    plinio = setups["reference"].wrapper
    gen = torch.Generator().manual_seed(seed)
    kept = {}
    for name, alpha in mask_alphas(plinio).items():
        kept[name] = (torch.rand(alpha.shape, generator=gen) * 0.8 + 0.6) * \
            torch.where(torch.rand(alpha.shape, generator=gen) < 0.5, -1.0, 1.0)
    logits = {n: torch.randn(a.shape, generator=gen) for n, a in _supernet_alphas(plinio).items()}
    taps = {n: torch.rand(p.shape, generator=gen) * 1.2 for n, p in _tap_parameters(plinio).items()}
    with torch.no_grad():
        for setup in setups.values():
            searched_taps = _tap_parameters(setup.wrapper)
            assert sorted(searched_taps) == sorted(taps)
            for n, p in searched_taps.items():
                p.copy_(taps[n])
            for name, alpha in mask_alphas(setup.wrapper).items():
                alpha.copy_(torch.where(alpha.abs() > 0.5, kept[name], alpha))
            supernets = _supernet_alphas(setup.wrapper)
            assert sorted(supernets) == sorted(logits)
            for n, alpha in supernets.items():
                alpha.copy_(logits[n])


def _corresponding_parameters(plinio: nn.Module, plain: PlainSearch):
    """(plinio parameter, plain parameter, what) for every parameter of the plain search."""
    pairs = []
    _, layers = mask_plan(plinio)
    for name in layers:
        plinio_layer = plinio.seed.get_submodule(name)
        plain_layer = plain.model.get_submodule(
            name.replace("sn_input_layers.", "branches.")).layer
        for attr in ("weight", "bias"):
            if getattr(plain_layer, attr) is not None:
                pairs.append((getattr(plinio_layer, attr), getattr(plain_layer, attr),
                              f"{name}.{attr}"))
        taps = plain.model.get_submodule(name.replace("sn_input_layers.", "branches.")).taps
        for masker, attr in (("timestep_masker", "beta"), ("dilation_masker", "gamma")):
            if taps is not None and getattr(taps, attr) is not None:
                pairs.append((getattr(getattr(plinio_layer, masker), attr),
                              getattr(taps, attr), f"{name}.{masker}.{attr}"))
    for name, alpha in mask_alphas(plain).items():
        pairs.append((mask_alphas(plinio)[name], alpha, name))
    plain_supernets = _supernet_alphas(plain)
    for name, alpha in _supernet_alphas(plinio).items():
        pairs.append((alpha, plain_supernets[name], f"{name} supernet alpha"))
    assert {id(p) for _, p, _ in pairs} == {id(p) for p in plain.parameters()}
    return pairs


def _gradients(setup: SearchSetup, loss_of: Callable[[SearchSetup], torch.Tensor]):
    setup.wrapper.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    loss = loss_of(setup)
    loss.backward()
    return loss.detach()


@pytest.mark.parametrize("name,hard", [("resnet8", False), ("resnet8", True), ("tcn", False)])
def test_plain_search_equals_plinio(name, hard):
    """Loss, regularizer and every gradient of the plain anchor equal the reference path's,
    with half the channels pruned and random architectural parameters."""
    setups = build_setups(name, batch_size=2, device="cpu", hard=hard, prune_fraction=0.5,
                          variants=("plain", "reference"))
    _randomize_architecture(setups, seed=3)
    plinio, plain = setups["reference"].wrapper, setups["plain"].wrapper
    for setup in setups.values():  # plinio's costs use the θ of the last forward
        with torch.no_grad():
            setup.forward(setup.inputs)
    torch.testing.assert_close(setups["plain"].regularizer(), setups["reference"].regularizer(),
                               rtol=1e-5, atol=0)
    pairs = _corresponding_parameters(plinio, plain)
    for loss_of in (forward_loss, lambda s: s.regularizer() * 1e-6):
        losses = [_gradients(setups[v], loss_of) for v in ("reference", "plain")]
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
        for p_plinio, p_plain, what in pairs:
            g_plinio = torch.zeros_like(p_plinio) if p_plinio.grad is None else p_plinio.grad
            g_plain = torch.zeros_like(p_plain) if p_plain.grad is None else p_plain.grad
            scale = float(g_plinio.abs().max()) + 1e-12
            torch.testing.assert_close(g_plain, g_plinio, rtol=1e-4, atol=1e-5 * scale,
                                       msg=lambda m: f"{name}: gradient of {what}: {m}")


def test_prune_fraction_prunes_the_same_channels_everywhere():
    fraction = 0.75
    setups = build_setups("resnet8", batch_size=2, device="cpu", prune_fraction=fraction)
    specs = channel_mask_specs(setups["fast"].wrapper)
    assert specs, "resnet8 has searched channel masks"
    expected = {name: pruned_count(spec, fraction) for name, spec in specs.items()}
    assert all(n > 0 for n in expected.values())
    pruned = {}
    for label, setup in setups.items():
        alphas = mask_alphas(setup.wrapper)
        assert count_below_threshold(alphas) == expected, label
        for name, alpha in alphas.items():
            assert float(alpha.detach()[-specs[name].keep_alive:].min()) == 1.0, label
        pruned[label] = {n: (a.detach() == PRUNED_ALPHA).nonzero().flatten().tolist()
                         for n, a in alphas.items()}
    assert pruned["fast"] == pruned["plain"] == pruned["reference"]
    assert loss_mismatch(setups) is None


def test_pruned_count_and_draws():
    spec = MaskSpec(16, keep_alive=1)
    assert [pruned_count(spec, f) for f in (0.0, 0.5, 0.75, 1.0)] == [0, 8, 12, 15]
    drawn = draw_pruned_channels({"a": spec, "b": MaskSpec(4, 2)}, 0.75, seed=0)
    assert len(drawn["a"]) == 12 and int(drawn["a"].max()) < 15
    assert drawn["b"].tolist() == [0, 1]
    assert torch.equal(drawn["a"], draw_pruned_channels({"a": spec, "b": MaskSpec(4, 2)},
                                                        0.75, seed=0)["a"])
    with pytest.raises(ValueError, match=r"prune fraction must be in \[0, 1\], got 1.5"):
        draw_pruned_channels({"a": spec}, 1.5)


def test_script_runs_with_tiny_settings(capsys):
    rows = main(["--batch-size", "2", "--workloads", "tcn,linear_supernet", "--hard",
                 "--prune", "0,0.5", "--repeats", "1", "--min-seconds", "0"])
    # the TCN has no supernet, so no hard-mode row; one row per fraction
    assert [(r.workload, r.mode, r.pruned) for r in rows] == [
        ("linear_supernet", "hard", 0.0), ("linear_supernet", "hard", 0.5)]
    for row in rows:
        assert all(row.ms[v] > 0 and row.mib[v] > 0 for v in VARIANTS)
    out = capsys.readouterr().out
    assert "plain = plain-PyTorch search" in out and "threads" in out and "UTC" in out
    assert "| linear_supernet | hard | 50% |" in out


def test_compile_table_times_the_four_searches(capsys, monkeypatch):
    """--compile --compile-only: a row with eager and compiled fast and plain,
    and the ratios of compiled fast to each anchor (backend eager: dynamo capture only)."""
    import bench.search_step as search_step

    monkeypatch.setattr(search_step, "compiled",
                        lambda setup, mode: compiled(setup, mode, backend="eager"))
    rows = main(["--batch-size", "2", "--workloads", "linear_supernet", "--modes", "soft",
                 "--compile", "--compile-only", "--prune", "0.5", "--repeats", "1",
                 "--min-seconds", "0"])
    assert [(r.workload, r.mode, r.pruned) for r in rows] == [("linear_supernet", "soft (default)", 0.5)]
    for row in rows:
        assert sorted(row.ms) == ["compiled fast", "compiled plain", "eager fast", "eager plain"]
        assert all(ms > 0 for ms in row.ms.values())
        assert row.over("eager fast") == row.ms["compiled fast"] / row.ms["eager fast"]
        best = min(row.ms["eager plain"], row.ms["compiled plain"])
        assert row.over("best plain") == row.ms["compiled fast"] / best
    out = capsys.readouterr().out
    assert "best plain = the faster plain search" in out and "| fast ms |" not in out
    assert f"| linear_supernet | soft (default) | 50% | {rows[0].ms['eager fast']:.1f} |" in out


def test_compile_table_refuses_a_compiled_search_that_computes_something_else(monkeypatch):
    import bench.search_step as search_step

    def wrong(setup, mode):
        return setup._replace(forward=lambda x: setup.forward(x) * 2)

    monkeypatch.setattr(search_step, "compiled", wrong)
    with pytest.raises(RuntimeError, match="compiled fast differs from eager"):
        search_step.measure_compiled("linear_supernet", "soft", 2, "cpu", 1, 1)


def test_each_round_times_the_last_of_its_consecutive_steps(monkeypatch):
    """--steps-per-round N: every search runs N steps in a row per round, the last one timed."""
    import bench.search_step as search_step

    order = []
    monkeypatch.setattr(search_step, "search_step", lambda setup: order.append(setup))
    ticks = iter(range(1000))
    monkeypatch.setitem(search_step.CLOCKS, "wall", lambda: float(next(ticks)))
    times = search_step.time_steps({"a": "A", "b": "B"}, repeats=2, warmup=1, device="cpu",
                                   steps_per_round=3)
    assert order == ["A", "B"] + ["A", "A", "A", "B", "B", "B"] * 2
    assert times == {"a": 1.0, "b": 1.0}  # one tick around each timed step, the untimed ones excluded
    with pytest.raises(ValueError, match="steps_per_round must be at least 1"):
        search_step.time_steps({"a": "A"}, repeats=1, warmup=1, device="cpu", steps_per_round=0)


def test_script_rejects_bad_options():
    with pytest.raises(SystemExit):
        main(["--steps-per-round", "0"])
    with pytest.raises(SystemExit):
        main(["--prune", "0,1.5"])
    with pytest.raises(SystemExit):
        main(["--workloads", "nope"])
    with pytest.raises(ValueError, match="unknown variants"):
        build_setups("seed", 2, "cpu", variants=("fast", "sparse"))


def test_plain_search_compiles_as_one_graph():
    """The plain anchor's model and regularizer each capture as one graph (--compile)."""
    setup = build_setups("linear_supernet", 2, "cpu", variants=("plain",))["plain"]
    torch._dynamo.reset()
    fresh = compiled(setup, mode=None, backend="eager")
    torch.manual_seed(1)
    expected = forward_loss(setup).detach()
    torch.manual_seed(1)
    torch.testing.assert_close(forward_loss(fresh).detach(), expected)


class _Unfoldable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(torch.relu(self.conv(x))).mean((2, 3)))


def test_plain_search_refuses_bad_plans_and_keeps_the_model():
    model = _Unfoldable()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = {"conv": LayerMasks("m", (), 3.0), "head": LayerMasks(None, (("m", 1.0),), 0.0)}
    with pytest.raises(ValueError, match=r"BatchNorm \['bn'\] does not directly follow"):
        PlainSearch(model, (3, 8, 8), {"m": MaskSpec(4)}, plan)
    with pytest.raises(ValueError, match=r"\['nope'\] are not Conv1d/Conv2d/Linear"):
        PlainSearch(model, (3, 8, 8), {"m": MaskSpec(4)}, {"nope": plan["conv"]})
    model.bn = nn.Identity()
    with pytest.raises(ValueError, match="layer conv uses mask 'x', which is not declared"):
        PlainSearch(model, (3, 8, 8), {"m": MaskSpec(4)},
                    {"conv": LayerMasks("x", (), 3.0)})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items() if k in before)
    with pytest.raises(ValueError, match="at least one branch"):
        PlainSuperNet([])


def test_plain_masked_layer_prunes_exactly():
    """A pruned channel outputs exactly zero (bias masked too) and its α still gets the
    straight-through gradient; the MACs count the continuous widths."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    plan = {"0": LayerMasks("m", (), 3.0), "2": LayerMasks(None, (("m", 1.0),), 0.0)}
    search = PlainSearch(model, (3, 5, 5), {"m": MaskSpec(4)}, plan)
    alpha = search.named_mask_alphas()["m"]
    with torch.no_grad():
        alpha.copy_(torch.tensor([0.2, -0.9, 0.5, 0.1]))
    hidden = search.model[0](torch.randn(2, 3, 5, 5))
    assert torch.equal(hidden[:, [0, 2]], torch.zeros_like(hidden[:, [0, 2]]))
    assert bool((hidden[:, 1] != 0).any())
    hidden.sum().backward()
    assert alpha.grad[0] != 0 and alpha.grad[3] == 0  # keep-alive: θ fixed at 1
    theta_sum = 0.2 + 0.9 + 0.5 + 1.0
    expected = 3 * theta_sum * 9 * 25 + theta_sum * 2 * 1 * 25
    assert float(search.macs().detach()) == pytest.approx(expected, rel=1e-6)


def test_tap_mask_keeps_a_suffix_and_a_dilation_pattern():
    """K = 5, L = 3: taps at distances 4, 3, 2, 1, 0 from the newest sum γ levels
    ≤ 2, 0, 1, 0, 2; the receptive field keeps the newest taps whose cumsum exceeds 0.5."""
    taps = TapMask(5, receptive_field=True, dilation=True)
    with torch.no_grad():
        taps.gamma.copy_(torch.tensor([0.3, -0.4, 0.0]))  # last level always 1
        taps.beta.copy_(torch.tensor([0.1, 0.1, 0.2, 0.3, 0.0]))  # cumsum .1 .2 .4 .7 1.7
    assert taps().tolist() == [0.0, 0.0, 0.0, 0.0, 1.0]  # taps 3, 4 by β; 0, 2, 4 by γ
    theta_gamma = [1.7, 0.3, 0.7, 0.3, 1.7]
    mean_beta = [0.1, 0.2 / 2, 0.4 / 3, 0.7 / 4, 1.7 / 5]
    mean_gamma = [t / n for t, n in zip(theta_gamma, [3, 1, 2, 1, 3])]
    expected = sum(b * g for b, g in zip(mean_beta, mean_gamma))
    assert float(taps.kernel_size().detach()) == pytest.approx(expected, rel=1e-6)
    only_dilation = TapMask(5, receptive_field=False, dilation=True)
    with torch.no_grad():
        only_dilation.gamma.copy_(torch.tensor([0.3, -0.4, 0.0]))
    assert only_dilation().tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]
