"""The mixing half of a supernet: architectural weights, θ sampling and the weighted sum.

All mutable state (temperature, hard flag, Gumbel noise, "has run" flag, selection switch)
lives in buffers that are only ever written in place, so that the module is
``state_dict``-complete, ``torch.compile(fullgraph=True)`` friendly (no ``.item()``, no
Python branch on tensor values, no attribute reassignment in ``forward``) and DDP friendly.
"""
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from plinio import ops
from plinio.methods.dnas_base.switches import checked_switch


class PITSuperNetCombiner(nn.Module):
    """Holds the architectural parameter ``alpha`` of one supernet and mixes branch outputs.

    The graph engine treats this module as an fx leaf that merges its inputs (like an n-ary
    ``add``): every branch output shares one channel masker.
    """

    plinio_merges_inputs = True

    def __init__(self, n_branches: int, gumbel_softmax: bool = False,
                 hard_softmax: bool = False) -> None:
        super().__init__()
        if not isinstance(n_branches, int) or isinstance(n_branches, bool) or n_branches < 1:
            raise ValueError(
                f"PITSuperNetCombiner needs at least one branch, got n_branches={n_branches!r}")
        self.n_branches = n_branches
        self.gumbel_softmax = checked_switch("PITSuperNetCombiner", "gumbel_softmax", gumbel_softmax)
        hard_softmax = checked_switch("PITSuperNetCombiner", "hard_softmax", hard_softmax)
        # fused plinio.ops.combine unless the reference backend is forced
        self.use_fused_ops = not ops.reference_path_forced()
        self.alpha = nn.Parameter(torch.full((n_branches,), 1.0 / n_branches))
        self.register_buffer("temperature", torch.tensor(1.0, dtype=torch.float32))
        self.register_buffer("hard", torch.tensor(hard_softmax))
        self.register_buffer("gumbel_noise", torch.zeros(n_branches))
        self.register_buffer("has_forwarded", torch.tensor(False))
        self.register_buffer("selection_trainable", torch.tensor(True))
        # Python mirrors of the two switches, read by the eager fast path without a
        # device synchronisation; refreshed whenever the buffers are loaded
        self._hard = hard_softmax
        self._selection_trainable = True

    # ------------------------------------------------------------------ θ
    @property
    def theta_alpha(self) -> torch.Tensor:
        """Current mixing vector θ, differentiable w.r.t. ``alpha`` (docs/behaviour.md §3.1).

        1/n before the first forward; otherwise softmax((α + noise) / T), replaced by the
        one-hot argmax when ``hard`` is set (straight-through gradient with Gumbel sampling
        in training mode, no gradient otherwise).
        """
        alpha = torch.where(self.selection_trainable, self.alpha, self.alpha.detach())
        logits = (alpha + self.gumbel_noise.to(alpha.dtype)) / self.temperature.to(alpha.dtype)
        soft = torch.softmax(logits, dim=0)
        one_hot = F.one_hot(torch.argmax(logits.detach()), self.n_branches).to(soft.dtype)
        if self.gumbel_softmax and self.training:
            hard_theta = one_hot + (soft - soft.detach())
        else:
            hard_theta = one_hot
        theta = torch.where(self.hard, hard_theta, soft)
        uniform = torch.full_like(theta, 1.0 / self.n_branches)
        return torch.where(self.has_forwarded.clone(), theta, uniform)  # clone: forwards write it

    def sample_theta(self) -> torch.Tensor:
        """Draw this forward's Gumbel noise in place (training + Gumbel only) and return θ."""
        noisy = self.gumbel_softmax and self.training
        with torch.no_grad():
            if noisy:
                tiny = torch.finfo(self.gumbel_noise.dtype).tiny
                uniform = torch.rand_like(self.gumbel_noise).clamp_min(tiny)
                exponential = (-torch.log(uniform)).clamp_min(tiny)
                self.gumbel_noise.copy_(-torch.log(exponential))
            else:
                self.gumbel_noise.zero_()
            self.has_forwarded.fill_(True)
        if torch.compiler.is_compiling() or self._hard or not self._selection_trainable:
            return self.theta_alpha
        return self._sampled_soft_theta(noisy)

    def _sampled_soft_theta(self, noisy: bool) -> torch.Tensor:
        """:attr:`theta_alpha` right after :meth:`sample_theta` in eager mode, soft, with the
        selection trained (the switches read from their Python mirrors): what the buffers
        rule out is left out (no noise to add unless ``noisy``; the forward has run; not
        hard) instead of ``torch.where`` over them. The same values and gradients, bit for
        bit, in a fifth of the ops."""
        alpha = self.alpha
        if noisy:
            alpha = alpha + self.gumbel_noise.to(alpha.dtype)
        return torch.softmax(alpha / self.temperature.to(alpha.dtype), dim=0)

    def forward(self, branch_outputs: List[torch.Tensor]) -> torch.Tensor:
        """y = Σ_i θ_i · y_i with a freshly sampled θ."""
        if len(branch_outputs) != self.n_branches:
            raise ValueError(
                f"PITSuperNetCombiner expects {self.n_branches} branch outputs, "
                f"got {len(branch_outputs)}")
        theta = self.sample_theta()
        if self.use_fused_ops:  # fused kernel: no stacked tensor is materialised
            return ops.combine(list(branch_outputs), theta)
        return ops.reference.combine(branch_outputs, theta)

    # ------------------------------------------------------------------ options
    def best_layer_index(self) -> int:
        """Index of the branch with the largest α (the one kept by export)."""
        return int(torch.argmax(self.alpha.detach()))

    @property
    def train_selection(self) -> bool:
        """Whether α receives gradients (α is used detached when off)."""
        return self._selection_trainable

    @train_selection.setter
    def train_selection(self, value: bool) -> None:
        self._selection_trainable = checked_switch("PITSuperNetCombiner", "train_selection", value)
        self.selection_trainable.fill_(self._selection_trainable)

    @property
    def softmax_temperature(self) -> float:
        """Softmax temperature T (stored in the ``temperature`` buffer)."""
        return float(self.temperature)

    @softmax_temperature.setter
    def softmax_temperature(self, value: float) -> None:
        self.update_softmax_options(temperature=value)

    @property
    def hard_softmax(self) -> bool:
        """Whether θ is the one-hot argmax (stored in the ``hard`` buffer)."""
        return self._hard

    @hard_softmax.setter
    def hard_softmax(self, value: bool) -> None:
        self.update_softmax_options(hard=value)

    def update_softmax_options(self, temperature: Optional[float] = None,
                               hard: Optional[bool] = None) -> None:
        """Change temperature and/or hard flag in place (no recompilation under compile)."""
        if hard is not None:
            hard = checked_switch("PITSuperNetCombiner", "hard", hard)
        if temperature is not None:
            value = float(temperature)
            if not value > 0.0 or value == float("inf"):
                raise ValueError(
                    f"softmax temperature must be a finite positive number, got {temperature!r}")
            self.temperature.fill_(value)
        if hard is not None:
            self._hard = hard
            self.hard.fill_(hard)

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str,
                              local_metadata: Dict[str, Any], strict: bool,
                              missing_keys: List[str], unexpected_keys: List[str],
                              error_msgs: List[str]) -> None:
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        self._hard = bool(self.hard)
        self._selection_trainable = bool(self.selection_trainable)

    def extra_repr(self) -> str:
        return (f"n_branches={self.n_branches}, gumbel_softmax={self.gumbel_softmax}, "
                f"hard_softmax={self.hard_softmax}, temperature={self.softmax_temperature}")
