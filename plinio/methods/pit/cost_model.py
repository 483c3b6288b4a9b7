"""Effective counts of PIT layers and their size / MACs, as per-layer vectors
(docs/behaviour.md §4.1, docs/internals.md §3).

Every static factor (which masker feeds each layer's input and output, flatten factors,
kernel sizes, groups, output positions, call counts) is turned into tensors once, at
construction. The fast path then evaluates all layers with a handful of tensor ops:

    θ  = |cat(α of every masker)| with keep-alive entries set to 1
    n  = per-masker Σθ (one index_add)           Cin = A_in · n + c_in    Cout = A_out · n + c_out
    k  = per-layer Σ over taps of (θ_β / terms)(θ_γ / terms) + k_const

and the costs are those of the built-in specs of ``plinio.cost`` on these counts
(size = Cin · Cout · k / groups, macs = size · output positions), with no Python loop over
layers and no host-device synchronisation. In eager mode on the CPU, the soft built-in costs
computed at every search step run as one native op and its written-out backward
(``plinio::pit_soft_costs``, csrc/cpu/pit_soft_costs_cpu.cpp) on tables built from the same
static factors: a few microseconds where the graph of tensor ops and its autograd take a
couple of hundred (on a pruned TCN step, several percent of the step). The reference path
is PLiNIO's structure: a Python loop over the layers (``get_size()`` / ``get_macs()``, or
each layer's own counts).
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from plinio.cost.geometry import LayerGeometry, LayerShape
from plinio.cost.specs import MACS, PARAMS, LayerCosts
from plinio.methods.pit.nn.batchnorm_common import PITBatchNormBase
from plinio.methods.pit.nn.binarizer import PITBinarizer
from plinio.methods.pit.nn.conv1d import PITConv1d
from plinio.methods.pit.nn.conv2d import PITConv2d
from plinio.methods.pit.nn.features_masker import PITFeaturesMasker
from plinio.methods.pit.nn.module import PITModule, PITWeightedModule
from plinio.ops import reference_path_forced
from plinio.ops._library import compiled_ops
from plinio.ops.double_backward import graph_needed

Counts = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""(in_channels, out_channels, kernel_taps) vectors, one entry per layer."""
MaskVectors = Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]
"""(α, β, γ) concatenated over the maskers (β, γ None without Conv1d layers)."""


def _block_diag(blocks: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.block_diag(*blocks) if blocks else torch.zeros(0, 0)


def pit_layer_shape(name: str, layer: PITModule, in_spatial: Tuple[int, ...] = (),
                    out_spatial: Tuple[int, ...] = ()) -> LayerShape:
    """The ``plinio.cost`` shape of a PIT layer at full width (spatial sizes as given: the
    layer alone does not know them all; its output positions and calls are its own)."""
    calc_size = layer.input_features_calculator.size
    if isinstance(layer, PITBatchNormBase):
        return LayerShape(name, "batchnorm", calc_size, calc_size, in_spatial=in_spatial,
                          out_spatial=out_spatial, calls=layer.calls, out_positions=layer.out_positions)
    if not isinstance(layer, PITWeightedModule):
        raise TypeError(f"cost model: unsupported layer type {type(layer).__name__} ('{name}')")
    out = layer.out_features_masker.out_channels
    if isinstance(layer, (PITConv1d, PITConv2d)):
        kind = "conv1d" if isinstance(layer, PITConv1d) else "conv2d"
        return LayerShape(name, kind, calc_size, out, tuple(layer.kernel_size), tuple(layer.stride),
                          tuple(layer.dilation), layer.groups, in_spatial, out_spatial, layer.calls,
                          layer.out_positions)
    return LayerShape(name, "linear", calc_size, out, calls=layer.calls, out_positions=layer.out_positions)


class PITCostModel(nn.Module):
    """Per-layer counts and size / MACs of PIT layers: ``masker_counts(binarized)``,
    ``layer_counts(binarized)`` and ``layer_costs(binarized)`` -> (size[l], macs[l])."""

    def __init__(self, layers: Dict[str, PITModule], fast: bool = True) -> None:
        super().__init__()
        self.layer_names: List[str] = list(layers)
        self._layers: Tuple[PITModule, ...] = tuple(layers.values())
        self.fast = fast
        self.shapes: Tuple[LayerShape, ...] = tuple(pit_layer_shape(n, layer) for n, layer in layers.items())
        self._build_static()
        self.builtins = LayerCosts(self.shapes, {"size": PARAMS, "macs": MACS}, check_finite=False).to(
            self.c_in.device) if self._layers else None

    # ---- static tables ---------------------------------------------------------------------
    def _build_static(self) -> None:
        layers = self._layers
        maskers: List[PITFeaturesMasker] = []
        index: Dict[int, int] = {}
        thresholds: Dict[int, float] = {}

        def masker_index(m: PITFeaturesMasker, thr: float) -> int:
            if id(m) not in index:
                index[id(m)] = len(maskers)
                maskers.append(m)
                thresholds[id(m)] = thr
            return index[id(m)]

        rows_in: List[Dict[int, float]] = []
        c_in, k_const = [], []
        out_idx: List[int] = []
        for layer in layers:
            terms, const = layer.input_features_calculator.linear_terms()
            row: Dict[int, float] = {}
            for m, coef in terms:
                j = masker_index(m, getattr(layer.input_features_calculator, "threshold", 0.5))
                row[j] = row.get(j, 0.0) + coef
            rows_in.append(row)
            c_in.append(const)
            if isinstance(layer, PITWeightedModule):
                out_idx.append(masker_index(layer.out_features_masker, layer.binarization_threshold))
                k_const.append(0.0 if isinstance(layer, PITConv1d) else float(layer.kernel_volume(False)))
            else:  # BatchNorm: as many output channels as input channels
                out_idx.append(-1)
                k_const.append(1.0)
        a_in = torch.zeros(len(layers), len(maskers))
        a_out = torch.zeros(len(layers), len(maskers))
        for i, row in enumerate(rows_in):
            for j, coef in row.items():
                a_in[i, j] = coef
            if out_idx[i] >= 0:
                a_out[i, out_idx[i]] = 1.0
            else:
                a_out[i] = a_in[i]
        c_out = [0.0 if j >= 0 else c for j, c in zip(out_idx, c_in)]
        sizes = [m.out_channels for m in maskers]
        self._maskers: Tuple[PITFeaturesMasker, ...] = tuple(maskers)
        self._masker_thresholds = tuple(thresholds[id(m)] for m in maskers)
        dev = self._device_of(layers)
        reg = self._register
        reg("a_in", a_in, dev)
        reg("a_out", a_out, dev)
        reg("c_in", torch.tensor(c_in), dev)
        reg("c_out", torch.tensor(c_out), dev)
        reg("k_const", torch.tensor(k_const), dev)
        reg("seg", torch.repeat_interleave(torch.arange(len(maskers)), torch.tensor(sizes, dtype=torch.long)), dev)
        keep = torch.cat([m._keep_alive for m in maskers]).cpu() if maskers else torch.zeros(0, dtype=torch.bool)
        reg("keep", keep, dev)
        reg("thr", torch.repeat_interleave(torch.tensor(self._masker_thresholds),
                                           torch.tensor(sizes, dtype=torch.long)), dev)
        self._build_time_tables(dev)
        self._soft_cost_tables = self._native_tables()

    def _build_time_tables(self, dev: torch.device) -> None:
        convs = [(i, conv) for i, conv in enumerate(self._layers) if isinstance(conv, PITConv1d)]
        self._time_maskers = tuple((conv.timestep_masker, conv.dilation_masker) for _, conv in convs)
        ks = [conv.rf for _, conv in convs]
        total = sum(ks)
        k_seg = torch.zeros(len(self._layers), total)
        off = 0
        for (i, _), k in zip(convs, ks):
            k_seg[i, off:off + k] = 1.0
            off += k
        tm = [t for t, _ in self._time_maskers]
        dm = [d for _, d in self._time_maskers]
        reg = self._register
        reg("k_seg", k_seg, dev)
        reg("beta_prefix", _block_diag([t.tap_matrix(k).cpu() for t, k in zip(tm, ks)]), dev)
        reg("beta_terms", torch.cat([t.tap_terms(k).cpu() for t, k in zip(tm, ks)]) if tm else torch.zeros(0), dev)
        reg("beta_last", torch.cat([t._last.cpu() for t in tm]) if tm else torch.zeros(0, dtype=torch.bool), dev)
        reg("gamma_taps", _block_diag([d.tap_matrix(k).cpu() for d, k in zip(dm, ks)]), dev)
        reg("gamma_terms", torch.cat([d.tap_terms(k).cpu() for d, k in zip(dm, ks)]) if dm else torch.zeros(0), dev)
        reg("gamma_last", torch.cat([d._last.cpu() for d in dm]) if dm else torch.zeros(0, dtype=torch.bool), dev)
        reg("tap_thr", torch.cat([torch.full((conv.rf,), conv.binarization_threshold) for _, conv in convs])
            if convs else torch.zeros(0), dev)

    def _native_tables(self) -> Tuple[torch.Tensor, ...]:
        """The static tables of ``plinio::pit_soft_costs``, in its order: CPU copies (float64
        coefficients), kept out of the buffers so that neither ``.to(device)`` nor ``.half()``
        touches them."""
        groups, positions, calls = LayerGeometry.static_tensors(self.shapes, dtype=torch.float64)
        is_bn = torch.tensor([s.kind == "batchnorm" for s in self.shapes], dtype=torch.bool)
        tables = (self.seg, self.keep, self.a_in, self.a_out, self.c_in, self.c_out, self.k_const, groups,
                  positions, calls, is_bn, self.beta_prefix, self.beta_terms, self.beta_last, self.gamma_taps,
                  self.gamma_terms, self.gamma_last, self.k_seg)
        return tuple(t.detach().to("cpu", torch.float64 if t.is_floating_point() else t.dtype).contiguous()
                     for t in tables)

    def _register(self, name: str, value: torch.Tensor, dev: torch.device) -> None:
        self.register_buffer(name, value.to(dev), persistent=False)

    @staticmethod
    def _device_of(layers: Sequence[PITModule]) -> torch.device:
        for layer in layers:
            for p in layer.parameters():
                return p.device
        return torch.device("cpu")

    @property
    def maskers(self) -> Tuple[PITFeaturesMasker, ...]:
        """The channel maskers the layers read, in the order of ``masker_counts``."""
        return self._maskers

    @property
    def fast_path(self) -> bool:
        """Whether the vectorized path is in use (``fast`` and no forced reference backend)."""
        return self.fast and not reference_path_forced()

    # ---- counts ----------------------------------------------------------------------------
    def masker_counts(self, binarized: bool = False) -> torch.Tensor:
        """Effective channels of every masker (Σθ, or the number kept when ``binarized``)."""
        if not self.fast_path:
            if not self._maskers:
                return self.c_in.new_zeros(0)
            thetas = [m.theta for m in self._maskers]
            if binarized:
                thetas = [PITBinarizer.apply(t, thr) for t, thr in zip(thetas, self._masker_thresholds)]
            return torch.stack([t.sum() for t in thetas])
        if not self._maskers:
            return self.c_in.new_zeros(0)
        theta = self._theta(self._alpha())
        if binarized:
            theta = PITBinarizer.apply(theta, self.thr)
        return self._segment_sums(theta)

    def layer_counts(self, binarized: bool = False) -> Counts:
        """(Cin, Cout, kernel taps) of every layer, differentiable w.r.t. the mask parameters."""
        if self.fast_path:
            return self._fast_counts(binarized)
        return self._reference_counts(binarized)

    def _reference_counts(self, binarized: bool) -> Counts:
        if not self._layers:
            return self.c_in, self.c_out, self.k_const
        cin, cout, taps = [], [], []
        for layer in self._layers:
            calc = layer.input_features_calculator
            cin.append(calc.features_binarized if binarized else calc.features)
            if isinstance(layer, PITWeightedModule):
                cout.append(layer.features_mask.sum() if binarized else layer.out_features_eff)
            else:
                cout.append(cin[-1])
            taps.append(torch.as_tensor(layer.kernel_volume(binarized) if isinstance(layer, PITWeightedModule)
                                        else 1, dtype=cin[-1].dtype, device=cin[-1].device))
        return torch.stack(cin), torch.stack(cout), torch.stack(taps)

    def _mask_vectors(self) -> MaskVectors:
        """(α of every channel masker, β and γ of every Conv1d, or None without Conv1d),
        each concatenated in the order of the static tables."""
        alpha = self._alpha()
        if not self._time_maskers:
            return alpha, None, None
        return (alpha, torch.cat([t.fast_param() for t, _ in self._time_maskers]),
                torch.cat([d.fast_param() for _, d in self._time_maskers]))

    def _alpha(self) -> torch.Tensor:
        return torch.cat([m.fast_param() for m in self._maskers])

    def _theta(self, alpha: torch.Tensor) -> torch.Tensor:
        return torch.where(self.keep, torch.ones_like(alpha), alpha.abs())

    def _segment_sums(self, theta: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(self._maskers), dtype=theta.dtype, device=theta.device).index_add(0, self.seg, theta)

    def _channel_counts(self, counts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.a_in.to(counts.dtype) @ counts + self.c_in, self.a_out.to(counts.dtype) @ counts + self.c_out

    def _tap_thetas(self, beta: torch.Tensor, gamma: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """θ of every receptive-field and dilation tap (before binarization)."""
        beta_hat = torch.where(self.beta_last, torch.ones_like(beta), beta.abs())
        gamma_hat = torch.where(self.gamma_last, torch.ones_like(gamma), gamma.abs())
        return self.beta_prefix.to(beta.dtype) @ beta_hat, self.gamma_taps.to(gamma.dtype) @ gamma_hat

    def _fast_counts(self, binarized: bool) -> Counts:
        if not self._maskers:
            return self.c_in, self.c_out, self.k_const
        alpha, beta, gamma = self._mask_vectors()
        if not binarized:
            return self._soft_counts(alpha, beta, gamma)
        cin, cout = self._channel_counts(self._segment_sums(PITBinarizer.apply(self._theta(alpha), self.thr)))
        k = self.k_const
        if beta is not None:
            theta_b, theta_g = self._tap_thetas(beta, gamma)
            taps = PITBinarizer.apply(theta_b, self.tap_thr) * PITBinarizer.apply(theta_g, self.tap_thr)
            k = self.k_seg.to(taps.dtype) @ taps + k
        return cin, cout, k

    def _soft_counts(self, alpha: torch.Tensor, beta: Optional[torch.Tensor],
                     gamma: Optional[torch.Tensor]) -> Counts:
        """The continuous counts of every layer."""
        cin, cout = self._channel_counts(self._segment_sums(self._theta(alpha)))
        if beta is None:
            return cin, cout, self.k_const
        theta_b, theta_g = self._tap_thetas(beta, gamma)
        taps = (theta_b / self.beta_terms) * (theta_g / self.gamma_terms)
        return cin, cout, self.k_seg.to(taps.dtype) @ taps + self.k_const

    # ---- built-in costs --------------------------------------------------------------------
    def layer_costs(self, binarized: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """(size[l], macs[l]) float32 vectors, differentiable w.r.t. the mask parameters."""
        if self.fast_path:
            return self._fast_costs(binarized)
        return self._reference_costs(binarized)

    def _reference_costs(self, binarized: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        if not self._layers:
            return self.c_in.float(), self.c_in.float()
        if binarized:
            sizes = [layer.get_size_binarized() for layer in self._layers]
            macs = [layer.get_macs_binarized() for layer in self._layers]
        else:
            sizes = [layer.get_size() for layer in self._layers]
            macs = [layer.get_macs() for layer in self._layers]
        return torch.stack(sizes).float(), torch.stack(macs).float()

    def _fast_costs(self, binarized: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.builtins is None:
            return self.c_in.float(), self.c_in.float()
        if binarized or not self._maskers or torch.compiler.is_compiling():
            return self._graph_costs(binarized)
        params = self._mask_vectors()
        if not _native_costs_run(params[0]):
            return self._builtin_costs(self._soft_counts(*params))
        return _SoftBuiltinCosts.apply(self, *params)

    def _graph_costs(self, binarized: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """The built-in specs on the counts, through autograd (binarized masks, torch.compile,
        devices other than the CPU)."""
        return self._builtin_costs(self._fast_counts(binarized))

    def _builtin_costs(self, counts: Counts) -> Tuple[torch.Tensor, torch.Tensor]:
        costs = self.builtins(*counts)
        return costs["size"].float(), costs["macs"].float()


def _native_costs_run(alpha: torch.Tensor) -> bool:
    """Whether ``plinio::pit_soft_costs`` computes the soft costs of mask parameters like ``alpha``."""
    if alpha.device.type != "cpu" or alpha.dtype not in (torch.float32, torch.float64):
        return False
    ops = compiled_ops()
    return ops is not None and hasattr(ops, "pit_soft_costs")


class _SoftBuiltinCosts(torch.autograd.Function):
    """Per-layer size and MACs with the continuous masks, by ``plinio::pit_soft_costs`` and its
    backward op. A backward that builds a graph (``create_graph=True``) differentiates the
    graph path instead, so higher derivatives are exact too."""

    @staticmethod
    def forward(ctx: Any, model: PITCostModel, alpha: torch.Tensor, beta: Optional[torch.Tensor],
                gamma: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        ctx.model = model
        ctx.save_for_backward(alpha, beta, gamma)
        return tuple(torch.ops.plinio.pit_soft_costs(alpha, beta, gamma, model._soft_cost_tables))

    @staticmethod
    def backward(ctx: Any, d_size: torch.Tensor, d_macs: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        model = ctx.model
        params = ctx.saved_tensors
        wanted = ctx.needs_input_grad[1:]
        if graph_needed(*params):
            inputs = [t for t, need in zip(params, wanted) if need]
            with torch.enable_grad():
                costs = model._builtin_costs(model._soft_counts(*params))
            grads = iter(torch.autograd.grad(costs, inputs, (d_size, d_macs), create_graph=True))
            return (None,) + tuple(next(grads) if need else None for need in wanted)
        grads = torch.ops.plinio.pit_soft_costs_backward(d_size, d_macs, *params, model._soft_cost_tables)
        return (None,) + tuple(g if need else None for g, need in zip(grads, wanted))
