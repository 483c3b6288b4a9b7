"""The fast forward of one supernet: merged convolution + fused combine + hard-mode shortcut.

``FastSuperNet`` replaces, in the converted graph, a supernet's branch nodes and its combiner
node. It computes exactly what the reference computes, ``Σ_i θ_i·branch_i(x)`` with θ from
``combiner.sample_theta()``, as

* soft (and compiled) mode: ``merged_conv(x; θ_M) + combine([branch_j(x)], θ_rest)``, where
  a branch ending in a ReLU hands its pre-activation to ``combine``, which applies the ReLU
  inside the sum (on the CPU kernels: no activation tensor and no separate ReLU backward);
* hard mode, eager (θ one-hot in value): only the selected branch with autograd; the others
  without autograd state when α's gradient needs ``⟨g, y_j⟩``, or not at all otherwise.

It only *refers* to layers owned by the model (kept in tuples, not registered), so the
model's parameters, buffers and ``state_dict`` keys are unchanged.
"""
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .hard_mode import first_order_only, gradient_anchors, updates_state_in_training, zero_gradient_link
from .linear_ops import ConvGeometry, layer_weight_and_bias, reference_conv
from .merge_plan import MergePlan
from .merged_conv import MergedConv
from .sparse_step import sparse_call


Runner = Callable[[torch.Tensor], torch.Tensor]
# (runner of a branch up to the input of its final convolution, (that layer, its geometry))
LinearTail = Tuple[Runner, Tuple[nn.Module, ConvGeometry]]


def load_op_library() -> None:
    """Load the compiled op library now, in eager mode, so that a later ``torch.compile``
    trace does not have to run its one-time loader (locks, imports)."""
    try:
        from plinio.ops import get_backend
    except ImportError:
        return
    get_backend("cpu")


def weighted_sum(outputs: Sequence[torch.Tensor], theta: torch.Tensor,
                 relu: Optional[Sequence[bool]] = None) -> torch.Tensor:
    """Σ θ_i·r_i(y_i) with the fused kernel, no stacked copy (r_i: ReLU where relu[i])."""
    from plinio.ops import combine

    return combine(list(outputs), theta, relu)


def _accumulate(total: Optional[torch.Tensor], part: Optional[torch.Tensor]) -> torch.Tensor:
    """``total + part`` (either may be None: nothing yet), in place into whichever fresh sum
    already has the result's dtype (the two differ under autocast, e.g. a bfloat16
    convolution and a float32 Identity)."""
    if total is None or part is None:
        return part if total is None else total
    dtype = torch.promote_types(total.dtype, part.dtype)
    if total.dtype == dtype:
        return total.add_(part)
    if part.dtype == dtype:
        return part.add_(total)
    return total + part


def _take(theta: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
    """θ restricted to ``indices`` (slices only: no index tensor, no host-device copy)."""
    if list(indices) == list(range(indices[0], indices[0] + len(indices))):
        return theta[indices[0]:indices[0] + len(indices)]
    return torch.cat([theta[i:i + 1] for i in indices])


def _aliases(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` share memory (one is the other, or a view of it)."""
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _to_channels_last(grad: torch.Tensor) -> torch.Tensor:
    return grad.contiguous(memory_format=torch.channels_last)


def keep_gradient_layout(out: torch.Tensor) -> torch.Tensor:
    """``out``, whose gradient will arrive in ``out``'s channels_last layout (eager; no-op for
    other layouts). ``combine``'s backward gives the branches' gradients in the layout of the
    gradient it receives; a gradient of another layout (e.g. the contiguous one of an average
    pool's backward) would be copied to the channels_last branches' layout there, again by each
    compact convolution of sparse execution, and passed on through an Identity branch to every
    supernet below. One copy here instead."""
    if out.requires_grad and out.dim() == 4 and not out.is_contiguous() \
            and out.is_contiguous(memory_format=torch.channels_last) and not torch.compiler.is_compiling():
        out.register_hook(_to_channels_last)
    return out


class FastSuperNet(nn.Module):
    """Exact fast forward of one supernet (see module docstring)."""

    def __init__(self, name: str, combiner: nn.Module, plan: MergePlan,
                 merged: Optional[MergedConv], branches: Sequence[Runner],
                 branch_modules: Sequence[Sequence[nn.Module]],
                 linear_tails: Optional[Dict[int, LinearTail]] = None,
                 relu_inputs: Optional[Dict[int, Runner]] = None) -> None:
        super().__init__()
        if len(branches) != plan.n_branches or len(branch_modules) != plan.n_branches:
            raise ValueError(f"FastSuperNet '{name}': {plan.n_branches} branches planned, got "
                             f"{len(branches)} runners and {len(branch_modules)} module lists")
        self.supernet_name = name
        self.plan = plan
        self.separate = plan.separate
        # tuples: referenced, not registered (no duplicate parameters / state_dict keys)
        self._combiner = (combiner,)
        self._merged = (merged,)
        self._branches = tuple(branches)
        self._branch_modules = tuple(tuple(m) for m in branch_modules)
        # branches that pass x on in its own dtype (Identity, or no module): under autocast
        # their dtype can differ from a convolution's, and the sum has the wider one
        self._dtype_keeping = tuple(j for j, modules in enumerate(self._branch_modules)
                                    if all(isinstance(m, nn.Identity) for m in modules))
        # separate branches ending in a convolution: θ scales that layer's weights (soft path)
        self._tails = dict(sorted((linear_tails or {}).items()))
        self._combined = tuple(i for i in self.separate if i not in self._tails)
        # combined branches ending in a ReLU: computed up to it, the ReLU fused into combine
        self._relu_inputs = {i: r for i, r in sorted((relu_inputs or {}).items())
                             if i in self._combined}
        self._combined_relu = [i in self._relu_inputs for i in self._combined] \
            if self._relu_inputs else None
        load_op_library()

    @property
    def fused_relu_branches(self) -> Tuple[int, ...]:
        """Branches whose final ReLU runs inside ``combine`` (soft mode)."""
        return tuple(self._relu_inputs)

    @property
    def merged(self) -> Optional[MergedConv]:
        """The merged convolution of the plan's merged branches (None: none merged)."""
        return self._merged[0]

    @property
    def combiner(self) -> nn.Module:
        """The supernet's combiner (owner of α and the sampling state)."""
        return self._combiner[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling() and self.combiner.hard_softmax:
            return self._hard_forward(x)
        inputs = {}
        for i in self.separate:  # branch by branch, then θ: random draws as in the reference
            tail = self._tails.get(i)
            if tail is not None:
                inputs[i] = tail[0](x)
            else:
                inputs[i] = self._relu_inputs.get(i, self._branches[i])(x)
        theta = self.combiner.sample_theta()
        out = self._merged_output(x, theta)
        for i, (_, (layer, geometry)) in self._tails.items():
            weight, bias = layer_weight_and_bias(layer)
            scale = theta[i].to(weight.dtype)
            weight, bias = weight * scale, None if bias is None else bias * scale
            call = sparse_call(layer, inputs[i], weight.requires_grad, geometry)
            y = call(inputs[i], weight, bias) if call is not None else \
                reference_conv(inputs[i], weight, bias, geometry)
            out = _accumulate(out, y)  # fresh conv outputs, not saved: in place
        if self._combined:
            mixed = weighted_sum([inputs[i] for i in self._combined],
                                 _take(theta, self._combined), self._combined_relu)
            out = _accumulate(mixed, out)  # combine's backward does not need its output
        return keep_gradient_layout(out)

    def _merged_output(self, x: torch.Tensor, theta: torch.Tensor) -> Optional[torch.Tensor]:
        """Σ θ_i·branch_i(x) over the merged branches (sparse in a sparse step, keyed by the
        combiner), None when no branch is merged."""
        merged = self._merged[0]
        if merged is None:
            return None
        return merged(x, theta, sparse_call(self.combiner, x, True, merged.geometry))

    def _mix(self, x: torch.Tensor, theta: torch.Tensor,
             rest: List[torch.Tensor]) -> torch.Tensor:
        out = self._merged_output(x, theta)
        if rest:
            mixed = weighted_sum(rest, _take(theta, self.separate))
            # in place into the fresh sum (combine's backward does not need its output)
            out = _accumulate(mixed, out)
        return out

    def _alpha_needs_outputs(self, theta: torch.Tensor) -> bool:
        """Whether α's gradient uses the non-selected outputs: only with the straight-through
        Gumbel estimator in training mode (docs/behaviour.md §3.1: plain hard θ has no gradient to α)."""
        combiner = self.combiner
        return (torch.is_grad_enabled() and theta.requires_grad
                and bool(getattr(combiner, "gumbel_softmax", False)) and combiner.training
                and combiner.train_selection)

    def _hard_forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.combiner.sample_theta()
        selected = int(torch.argmax(theta.detach()))
        others = [j for j in range(self.plan.n_branches) if j != selected]
        if self._alpha_needs_outputs(theta):
            refusal = (f"plinio fast path: supernet '{self.supernet_name}' runs in hard Gumbel mode, where the "
                       "branches not selected are evaluated without autograd state: their first derivatives "
                       "are exact, their second derivatives are not available. A backward with "
                       "create_graph=True (e.g. a gradient penalty) needs fast=False, or soft mode")
            x = first_order_only(x, refusal)
            rest = []
            for i in self.separate:
                if i == selected:
                    rest.append(self._branches[i](x))
                else:
                    with torch.no_grad():
                        rest.append(self._branches[i](x))
            out = self._mix(x, theta, rest)
            skipped = [j for j in others if j in self.separate]
            anchors = gradient_anchors(m for j in skipped for m in self._branch_modules[j])
            return out + zero_gradient_link(theta, anchors, refusal) if anchors else out
        out = self._branches[selected](x)
        if out.dtype != x.dtype and any(j != selected for j in self._dtype_keeping):
            out = out.to(torch.promote_types(out.dtype, x.dtype))  # the reference sum's dtype
        for j in others:
            if updates_state_in_training(self._branch_modules[j]):
                with torch.no_grad():
                    self._branches[j](x)
        anchors = gradient_anchors(m for j in others for m in self._branch_modules[j]) \
            if torch.is_grad_enabled() else []
        if anchors or (torch.is_grad_enabled() and theta.requires_grad):
            return out + zero_gradient_link(theta, anchors)  # also gives θ its (zero) gradient
        if _aliases(out, x):
            # an Identity (or eval-mode Dropout) branch gives x itself, where the reference's
            # Σ θ_i·y_i is a new tensor: an in-place op after the supernet (ReLU(inplace=True))
            # must not change x under the other layers that read it
            return out.clone()
        return out

    def extra_repr(self) -> str:
        return (f"supernet={self.supernet_name!r}, merged={self.plan.merged}, "
                f"separate={self.plan.separate}, fused_relu={self.fused_relu_branches}")
