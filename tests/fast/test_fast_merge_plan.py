"""The planner merges exactly the branches it may (proved from hyper-parameters), and the
merged convolution equals the θ-weighted sum of the branches (float64, values and grads)."""
import pytest
import torch
import torch.nn as nn

from plinio.fast.linear_ops import conv_geometry
from plinio.fast.merge_plan import IDENTITY, LinearCandidate, plan_merge
from plinio.fast.merged_conv import MergedConv


def _cand(module: nn.Module) -> LinearCandidate:
    g, reason = conv_geometry(module)
    assert g is not None, reason
    return LinearCandidate(g, g.macs_per_output_position())


def _check_merged_equals_sum(branches, plan, x):
    """Merged conv vs Σ θ_i branch_i(x): outputs and gradients of x, weights, biases, θ."""
    theta = torch.randn(len(branches), dtype=torch.float64, requires_grad=True)
    x = x.clone().requires_grad_(True)
    chains = [[(branches[m.branch], None if isinstance(branches[m.branch], nn.Identity)
                else conv_geometry(branches[m.branch])[0])] for m in plan.members]
    merged = MergedConv(plan, chains)
    params = [p for b in branches for p in b.parameters()] + [theta, x]
    ref = sum(theta[i] * branches[i](x) for i in plan.merged)
    got = merged(x, theta)
    torch.testing.assert_close(got, ref)
    g = torch.randn_like(ref)
    g_ref = torch.autograd.grad(ref, params, g, allow_unused=True)
    g_got = torch.autograd.grad(got, params, g, allow_unused=True)
    for a, b in zip(g_ref, g_got):
        if a is None:
            assert b is None or not b.any()
        else:
            torch.testing.assert_close(b, a)


def test_seed_example_plan():
    """conv3×3, conv3×3→conv3×3 (not exact), conv5×5, Identity → merge {0, 2, 3}."""
    branches = [nn.Conv2d(8, 8, 3, padding="same"), None, nn.Conv2d(8, 8, 5, padding="same"),
                nn.Identity()]
    cands = [_cand(branches[0]), "padded chain", _cand(branches[2]), IDENTITY]
    plan = plan_merge(cands)
    assert plan.merged == (0, 2, 3) and plan.separate == (1,)
    assert plan.geometry.kernel == (5, 5) and plan.geometry.pad_left == (2, 2)
    assert plan.reasons[1] == "padded chain"
    branches[1] = nn.Identity()  # unused: branch 1 is not merged
    _check_merged_equals_sum([b.double() for b in branches], plan,
                             torch.randn(2, 8, 7, 6, dtype=torch.float64))


def test_dilation_becomes_zero_taps_and_common_dilation_is_kept():
    b = [nn.Conv1d(4, 4, 3, padding=2, dilation=2), nn.Conv1d(4, 4, 5, padding=2),
         nn.Conv1d(4, 4, 3, padding="same", dilation=3, bias=False)]
    plan = plan_merge([_cand(m) for m in b])
    assert plan.merged == (0, 1, 2)
    assert plan.geometry.kernel == (7,) and plan.geometry.dilation == (1,)
    _check_merged_equals_sum([m.double() for m in b], plan,
                             torch.randn(3, 4, 12, dtype=torch.float64))
    only_dilated = [nn.Conv1d(4, 4, 3, padding=2, dilation=2), nn.Conv1d(4, 4, 5, padding=4, dilation=2)]
    plan = plan_merge([_cand(m) for m in only_dilated])
    assert plan.geometry.dilation == (2,) and plan.geometry.kernel == (5,)
    _check_merged_equals_sum([m.double() for m in only_dilated], plan,
                             torch.randn(3, 4, 12, dtype=torch.float64))


def test_asymmetric_and_strided_padding():
    """Even 'same' kernels (asymmetric padding) and stride 2 with different paddings."""
    b = [nn.Conv2d(4, 4, 2, padding="same"), nn.Conv2d(4, 4, 3, padding="same")]
    plan = plan_merge([_cand(m) for m in b])
    assert plan.merged == (0, 1)
    _check_merged_equals_sum([m.double() for m in b], plan, torch.randn(2, 4, 6, 5, dtype=torch.float64))
    b = [nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.Conv2d(4, 6, 5, stride=2, padding=2),
         nn.Conv2d(4, 6, 1, stride=2)]
    plan = plan_merge([_cand(m) for m in b])
    assert plan.merged == (0, 1, 2)
    _check_merged_equals_sum([m.double() for m in b], plan, torch.randn(2, 4, 9, 8, dtype=torch.float64))


def test_incompatible_branches_stay_separate():
    same3 = nn.Conv2d(4, 4, 3, padding=1)
    valid3 = nn.Conv2d(4, 4, 3, padding=0)        # different output size
    strided = nn.Conv2d(4, 4, 3, stride=2, padding=1)
    plan = plan_merge([_cand(same3), _cand(valid3), _cand(strided)])
    assert plan.merged == () and plan.separate == (0, 1, 2)
    depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    depthwise5 = nn.Conv2d(4, 4, 5, padding=2, groups=4)
    plan = plan_merge([_cand(same3), _cand(depthwise), _cand(depthwise5)])
    assert plan.merged == (1, 2)  # depthwise only with depthwise of the same groups
    assert "groups" in plan.reasons[0]


def test_identity_needs_matching_channels_and_a_conv():
    plan = plan_merge([_cand(nn.Conv2d(4, 6, 3, padding=1)), IDENTITY])
    assert plan.merged == ()
    plan = plan_merge([IDENTITY, IDENTITY, "nonlinear"])
    assert plan.merged == ()
    dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    plan = plan_merge([_cand(dw), IDENTITY])  # identity as a grouped Dirac kernel
    assert plan.merged == (0, 1)
    _check_merged_equals_sum([dw.double(), nn.Identity()], plan,
                             torch.randn(2, 4, 5, 5, dtype=torch.float64))


def test_merging_that_does_not_pay_off_is_skipped():
    """A cheap depthwise conv next to an identity: a dense Dirac merge would cost more."""
    dw = nn.Conv2d(64, 64, 3, padding=1, groups=64)
    dense = nn.Conv2d(64, 64, 1)
    plan = plan_merge([_cand(dense), _cand(nn.Conv2d(64, 64, 7, padding=3)), IDENTITY])
    assert plan.merged == (0, 1, 2)
    plan = plan_merge([_cand(dw), IDENTITY])
    assert plan.merged == (0, 1)  # grouped Dirac: as cheap as the depthwise conv itself
    from plinio.fast.linear_ops import compose
    g_dw = conv_geometry(dw)[0]
    g_pw = conv_geometry(dense)[0]
    chain = LinearCandidate(compose(g_dw, g_pw)[0], g_dw.macs_per_output_position()
                            + g_pw.macs_per_output_position())
    plan = plan_merge([chain, IDENTITY])  # dense 3×3 replacing depthwise + 1×1: too dear
    assert plan.merged == ()
    assert "pay off" in plan.reasons[1] or "cost" in plan.reasons[0]


def _block_members():
    """(branches, plan): a dilated member (taps with gaps), a smaller one, a bias-free one and
    an Identity, in 1-D and 2-D."""
    conv1 = [nn.Conv1d(6, 6, 3, padding=2, dilation=2), nn.Conv1d(6, 6, 5, padding=2),
             nn.Conv1d(6, 6, 3, padding=1, bias=False), nn.Identity()]
    conv2 = [nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 6, 5, padding=2, bias=False), nn.Identity()]
    for branches in (conv1, conv2):
        cands = [IDENTITY if isinstance(b, nn.Identity) else _cand(b) for b in branches]
        branches = [b.double() for b in branches]
        yield branches, plan_merge(cands)


def test_a_kernel_block_equals_the_block_of_the_full_kernel():
    """kernel_and_bias(block=(rows, cols)) gives the full kernel's [rows][:, cols] and the bias
    rows, with the same gradients to every weight, bias and θ, for random blocks (either
    index None: every channel), and again when the same block is asked for twice."""
    gen = torch.Generator().manual_seed(0)
    for branches, plan in _block_members():
        assert len(plan.members) == len(branches)
        chains = [[(branches[m.branch], None if isinstance(branches[m.branch], nn.Identity)
                    else conv_geometry(branches[m.branch])[0])] for m in plan.members]
        merged = MergedConv(plan, chains)
        params = [p for b in branches for p in b.parameters()]
        theta = torch.randn(len(branches), dtype=torch.float64, generator=gen, requires_grad=True)
        like = torch.zeros(1, dtype=torch.float64)
        for trial in range(6):
            rows = torch.randperm(6, generator=gen)[:1 + trial % 5].sort().values
            cols = torch.randperm(6, generator=gen)[:2 + trial % 4].sort().values
            block = (None if trial == 4 else rows, None if trial == 5 else cols)
            for _ in range(2):
                kernel, bias = merged.kernel_and_bias(theta, like, block=block)
                full_kernel, full_bias = merged.kernel_and_bias(theta, like)
                expected = full_kernel
                if block[0] is not None:
                    expected = expected.index_select(0, block[0])
                    full_bias = full_bias.index_select(0, block[0])
                if block[1] is not None:
                    expected = expected.index_select(1, block[1])
                torch.testing.assert_close(kernel, expected, rtol=0, atol=0)
                torch.testing.assert_close(bias, full_bias, rtol=0, atol=0)
                gk, gb = torch.randn_like(kernel), torch.randn_like(bias)
                got = torch.autograd.grad((kernel * gk).sum() + (bias * gb).sum(), params + [theta])
                want = torch.autograd.grad((expected * gk).sum() + (full_bias * gb).sum(), params + [theta])
                for a, b in zip(got, want):
                    torch.testing.assert_close(a, b)


def test_a_kernel_block_of_a_grouped_merged_conv_is_refused():
    """The block gather knows ungrouped kernels only (sparse execution asks for blocks of
    those only); a grouped one is refused by name, not built wrong."""
    branches = [nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 4, 5, padding=2, groups=4)]
    plan = plan_merge([_cand(b) for b in branches])
    assert plan.geometry.groups == 4
    merged = MergedConv(plan, [[(b, conv_geometry(b)[0])] for b in branches])
    rows = torch.tensor([0, 2])
    with pytest.raises(ValueError, match=r"MergedConv: a kernel block of a grouped merged convolution \(groups=4\)"):
        merged.kernel_and_bias(torch.ones(2), torch.zeros(1), block=(rows, None))
