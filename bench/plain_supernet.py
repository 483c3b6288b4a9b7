"""The plain-PyTorch anchor of the search-step benchmark: the search a user writes without plinio.

A DARTS-style supernet search with PIT-style channel masks, written the obvious way:

- every supernet (``PlainSuperNet``) runs all its branches (an ``nn.ModuleList``), stacks
  their outputs and sums them weighted by θ = softmax(α/T) (one-hot argmax in hard mode);
- every searched conv/linear (``MaskedLayer``) multiplies its weight rows and its bias by a
  binary channel mask ``(θ_c > 0.5)``, θ_c = |α_c| (the last channel always kept), with a
  straight-through gradient (``hard + (θ − θ.detach())``);
- the MACs regularizer (``PlainSearch.macs``) is a Python loop over the layers and supernets,
  with the cost model of plinio's PIT-SuperNet (docs/behaviour.md §4): a layer costs
  Cin·Cout·kernel/groups·positions with continuous widths Σθ; supernet branch i costs
  θ_i · (its static MACs − its masked layers' MACs at construction + their MACs now);
- a BatchNorm right after a conv/linear is folded into it before the search, as PIT does.

Which layers share a channel mask (outputs meeting at a residual add or at a supernet's sum)
and which mask gives each layer its input width is passed in (``LayerMasks``): the benchmark
takes it from plinio's conversion of the same model, so both searches optimise the same
parameters. A Conv1d may also search its taps (``TapMask``: receptive field and dilation,
as PIT does). Nothing here imports plinio.
"""
import copy
import math
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

SEARCHABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear)
BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)
THRESHOLD = 0.5


class MaskSpec(NamedTuple):
    """One channel mask: its number of channels and how many of the last ones are always kept."""

    channels: int
    keep_alive: int = 1


class LayerMasks(NamedTuple):
    """The masks one searched layer uses: its output mask (None: every channel kept, nothing
    searched) and its effective input width Σ coef · Σθ(mask) + const over ``input_terms``."""

    output: Optional[str]
    input_terms: Tuple[Tuple[str, float], ...]
    input_const: float
    receptive_field: bool = False  # Conv1d: whether its receptive field is searched
    dilation: bool = False  # Conv1d: whether its dilation is searched


def binarize(theta: torch.Tensor, threshold: float = THRESHOLD) -> torch.Tensor:
    """``1[θ > threshold]`` in the forward pass, gradient passed straight through to θ."""
    hard = (theta > threshold).to(theta.dtype)
    return hard + (theta - theta.detach())


class ChannelMask(nn.Module):
    """The searched width of one layer (or of several layers whose outputs are added)."""

    def __init__(self, channels: int, keep_alive: int = 1) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))
        keep = torch.zeros(channels, dtype=torch.bool)
        keep[channels - keep_alive:] = True
        self.register_buffer("keep", keep, persistent=False)

    def theta(self) -> torch.Tensor:
        """Continuous mask |α| with the keep-alive channels at 1."""
        return torch.where(self.keep, torch.ones_like(self.alpha), self.alpha.abs())

    def forward(self) -> torch.Tensor:
        """Binary mask with a straight-through gradient."""
        return binarize(self.theta())


def _abs_keep_last(p: torch.Tensor) -> torch.Tensor:
    """|p| with the last entry at 1 (always kept)."""
    last = torch.arange(p.shape[0], device=p.device) == p.shape[0] - 1
    return torch.where(last, torch.ones_like(p), p.abs())


class TapMask(nn.Module):
    """Which taps of a Conv1d kernel are kept (docs/behaviour.md §5.1), newest tap last.

    Receptive field: θ_β = cumsum(|β|) from the oldest tap, so the kept taps are a suffix.
    Dilation: tap j, at distance d = K−1−j from the newest, gets θ_γ[j] = Σ |γ_p| over
    p ≤ min(v(d), L−1) (v: the number of times 2 divides d, ∞ for d = 0), so the kept taps
    are those at multiples of 2^m. The mask is bin(θ_β) · bin(θ_γ); a kind not searched is 1.
    """

    def __init__(self, kernel_size: int, receptive_field: bool, dilation: bool) -> None:
        super().__init__()
        levels = max(math.ceil(math.log2(kernel_size)), 1) if kernel_size > 1 else 1
        self.beta = nn.Parameter(torch.ones(kernel_size)) if receptive_field else None
        self.gamma = nn.Parameter(torch.ones(levels)) if dilation else None
        summed = torch.zeros(kernel_size, levels)
        for tap in range(kernel_size):
            distance, level = kernel_size - 1 - tap, 0
            while level < levels - 1 and (distance == 0 or distance % 2 == 0):
                distance //= 2
                level += 1
            summed[tap, :level + 1] = 1.0
        self.register_buffer("gamma_terms", summed, persistent=False)
        self.register_buffer("beta_terms", torch.arange(1.0, kernel_size + 1), persistent=False)

    def thetas(self) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """(θ_β, θ_γ) per tap, None for a kind not searched."""
        beta = None if self.beta is None else torch.cumsum(_abs_keep_last(self.beta), 0)
        gamma = None if self.gamma is None else self.gamma_terms @ _abs_keep_last(self.gamma)
        return beta, gamma

    def forward(self) -> torch.Tensor:
        """Binary mask over the taps, straight-through gradient."""
        mask = torch.ones_like(self.beta_terms)
        for theta in self.thetas():
            if theta is not None:
                mask = mask * binarize(theta)
        return mask

    def kernel_size(self) -> torch.Tensor:
        """Continuous number of taps: Σ_taps (θ_β / its terms) · (θ_γ / its terms)."""
        beta, gamma = self.thetas()
        per_tap = torch.ones_like(self.beta_terms)
        if beta is not None:
            per_tap = per_tap * (beta / self.beta_terms)
        if gamma is not None:
            per_tap = per_tap * (gamma / self.gamma_terms.sum(1))
        return per_tap.sum()


class MaskedLayer(nn.Module):
    """A Conv1d/Conv2d/Linear whose output channels are multiplied by a binary mask, and its cost."""

    def __init__(self, layer: nn.Module, output_mask: Optional[ChannelMask],
                 input_terms: Sequence[Tuple[ChannelMask, float]], input_const: float,
                 positions: int, taps: Optional[TapMask] = None) -> None:
        super().__init__()
        self.layer = layer
        self.output_mask = output_mask
        self.taps = taps
        self.input_masks = nn.ModuleList(mask for mask, _ in input_terms)
        self.input_coefs = tuple(float(coef) for _, coef in input_terms)
        self.input_const = float(input_const)
        self.kernel = math.prod(getattr(layer, "kernel_size", ()))
        self.cost_factor = positions / getattr(layer, "groups", 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if self.output_mask is None and self.taps is None:
            return layer(x)
        weight, bias = layer.weight, layer.bias
        if self.output_mask is not None:
            mask = self.output_mask()
            weight = weight * mask.view((-1,) + (1,) * (weight.dim() - 1))
            bias = None if bias is None else bias * mask
        if self.taps is not None:
            weight = weight * self.taps()
        if isinstance(layer, nn.Linear):
            return F.linear(x, weight, bias)
        return layer._conv_forward(x, weight, bias)

    def macs(self) -> torch.Tensor:
        """Cin · Cout · kernel / groups · output positions, with continuous widths and taps."""
        cin = self.input_const + sum(coef * mask.theta().sum()
                                     for mask, coef in zip(self.input_masks, self.input_coefs))
        cout = self.output_mask.theta().sum() if self.output_mask is not None \
            else self.layer.weight.shape[0]
        kernel = self.taps.kernel_size() if self.taps is not None else self.kernel
        return cin * cout * kernel * self.cost_factor


class PlainSuperNet(nn.Module):
    """DARTS-style mixed op: Σ_i θ_i · branch_i(x), θ = softmax(α/T), every branch computed."""

    def __init__(self, branches: Sequence[nn.Module]) -> None:
        super().__init__()
        if not branches:
            raise ValueError("PlainSuperNet: needs at least one branch")
        self.branches = nn.ModuleList(branches)
        self.alpha = nn.Parameter(torch.full((len(branches),), 1.0 / len(branches)))
        self.register_buffer("temperature", torch.tensor(1.0))
        self.hard = False

    def theta(self) -> torch.Tensor:
        """Branch weights: softmax(α/T), or its one-hot argmax (no gradient) in hard mode."""
        theta = F.softmax(self.alpha / self.temperature, dim=0)
        if self.hard:
            return F.one_hot(theta.argmax(), len(self.branches)).to(theta.dtype)
        return theta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.theta()
        outputs = torch.stack([branch(x) for branch in self.branches])
        return (outputs * theta.view((-1,) + (1,) * (outputs.dim() - 1))).sum(0)


class _SupernetCost(NamedTuple):
    supernet: PlainSuperNet
    static_macs: Tuple[float, ...]       # per branch, measured on the unconverted branch
    initial_layer_macs: Tuple[float, ...]  # per branch, its masked layers' MACs at construction
    layers: Tuple[Tuple[MaskedLayer, ...], ...]  # per branch, its masked layers


class PlainSearch(nn.Module):
    """The searched model (``model``: supernets already ``PlainSuperNet``s), its masks and its
    MACs regularizer. ``layers`` maps the qualified name of every searched conv/linear to the
    masks it uses; ``masks`` declares every mask those names refer to.

    The regularizer recomputes θ = softmax(α/T); plinio's uses the θ of the last forward,
    which is the same value in a search step (forward first, no Gumbel sampling here)."""

    def __init__(self, model: nn.Module, input_shape: Sequence[int],
                 masks: Mapping[str, MaskSpec], layers: Mapping[str, LayerMasks]) -> None:
        super().__init__()
        model = copy.deepcopy(model)  # the caller's model is never modified
        modules = dict(model.named_modules())
        unknown = [name for name in layers if not isinstance(modules.get(name), SEARCHABLE_TYPES)]
        if unknown:
            raise ValueError(f"PlainSearch: {unknown} are not Conv1d/Conv2d/Linear layers of the "
                             "model; give LayerMasks for existing layers only")
        positions, static_macs = _probe_costs(model, tuple(input_shape), set(layers))
        _fold_batchnorms(model)
        self.channel_masks = nn.ModuleDict(
            {f"mask{i}": ChannelMask(spec.channels, spec.keep_alive)
             for i, spec in enumerate(masks.values())})
        self.mask_names = tuple(masks)
        by_name = dict(zip(self.mask_names, self.channel_masks.values()))
        masked: Dict[str, MaskedLayer] = {}
        for name, spec in layers.items():
            layer = model.get_submodule(name)
            taps = None
            if spec.receptive_field or spec.dilation:
                if not isinstance(layer, nn.Conv1d):
                    raise ValueError(f"PlainSearch: layer {name} is a {type(layer).__name__}; "
                                     "only Conv1d layers search their taps")
                taps = TapMask(layer.kernel_size[0], spec.receptive_field, spec.dilation)
            try:
                masked[name] = MaskedLayer(
                    layer, None if spec.output is None else by_name[spec.output],
                    [(by_name[key], coef) for key, coef in spec.input_terms],
                    spec.input_const, positions[name], taps)
            except KeyError as missing:
                raise ValueError(f"PlainSearch: layer {name} uses mask {missing}, which is not "
                                 "declared in masks") from None
            _replace(model, name, masked[name])
        self.model = model
        self._supernet_costs, self._outside = self._cost_structure(masked, static_macs)

    def _cost_structure(self, masked: Mapping[str, MaskedLayer],
                        static_macs: Mapping[str, Tuple[float, ...]]
                        ) -> Tuple[List[_SupernetCost], Tuple[MaskedLayer, ...]]:
        """Group the masked layers by supernet branch; the rest count on their own."""
        inside = set()
        supernets = []
        with torch.no_grad():
            for sn_name, sn in self.model.named_modules():
                if not isinstance(sn, PlainSuperNet):
                    continue
                per_branch = []
                for i in range(len(sn.branches)):
                    names = [n for n in masked if _in_branch(n, sn_name, i)]
                    inside.update(names)
                    per_branch.append(tuple(masked[n] for n in names))
                initial = tuple(float(sum(layer.macs() for layer in branch))
                                for branch in per_branch)
                supernets.append(_SupernetCost(sn, static_macs[sn_name], initial,
                                               tuple(per_branch)))
        outside = tuple(layer for name, layer in masked.items() if name not in inside)
        return supernets, outside

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def macs(self) -> torch.Tensor:
        """The MACs regularizer, one Python term per layer and per supernet branch."""
        total = torch.zeros((), device=self.model_device())
        for layer in self._outside:
            total = total + layer.macs()
        for cost in self._supernet_costs:
            theta = cost.supernet.theta()
            for i, layers in enumerate(cost.layers):
                branch = cost.static_macs[i] - cost.initial_layer_macs[i]
                for layer in layers:
                    branch = branch + layer.macs()
                total = total + theta[i] * branch
        return total

    def model_device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.parameters()).device

    def named_mask_alphas(self) -> Dict[str, nn.Parameter]:
        """Every channel mask's α, under the name it was declared with."""
        return {name: mask.alpha for name, mask in zip(self.mask_names, self.channel_masks.values())}

    def nas_parameters(self) -> List[nn.Parameter]:
        """Architectural parameters: channel-mask α, Conv1d tap β and γ, supernet α."""
        supernet_alphas = [m.alpha for m in self.model.modules() if isinstance(m, PlainSuperNet)]
        taps = [p for m in self.model.modules() if isinstance(m, TapMask) for p in m.parameters()]
        return list(self.named_mask_alphas().values()) + taps + supernet_alphas

    def net_parameters(self) -> List[nn.Parameter]:
        """Every other parameter (weights and biases)."""
        nas = {id(p) for p in self.nas_parameters()}
        return [p for p in self.parameters() if id(p) not in nas]

    def set_hard(self, hard: bool) -> None:
        """One-hot (hard) or softmax (soft) θ on every supernet."""
        for module in self.model.modules():
            if isinstance(module, PlainSuperNet):
                module.hard = bool(hard)


def _probe_costs(model: nn.Module, input_shape: Tuple[int, ...], searched: set
                 ) -> Tuple[Dict[str, int], Dict[str, Tuple[float, ...]]]:
    """Output positions of every searched layer (summed over calls; 1 per call for Linear)
    and the static MACs of every supernet branch (docs/behaviour.md §4.2), from one batch-1
    forward in eval mode on the unconverted model."""
    positions: Dict[str, int] = {name: 0 for name in searched}
    layer_macs: Dict[str, float] = {}
    handles = []

    def hook(name: str, module: nn.Module):
        def record(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            count = 1
            if isinstance(module, nn.modules.conv._ConvNd):
                for dim in output.shape[2:]:
                    count *= int(dim)
            if name in positions:
                positions[name] += count
            params = sum(p.numel() for p in module.parameters(recurse=False))
            layer_macs[name] = layer_macs.get(name, 0.0) + params * count
        return record

    for name, module in model.named_modules():
        if isinstance(module, PlainSuperNet):
            continue
        if name in searched or any(True for _ in module.parameters(recurse=False)):
            handles.append(module.register_forward_hook(hook(name, module)))
    training = {name: m.training for name, m in model.named_modules()}
    try:
        model.eval()
        param = next(model.parameters())
        with torch.no_grad():
            model(torch.randn((1,) + input_shape, device=param.device, dtype=param.dtype))
    finally:
        for handle in handles:
            handle.remove()
        for name, m in model.named_modules():
            m.training = training[name]
    static: Dict[str, Tuple[float, ...]] = {}
    for sn_name, sn in model.named_modules():
        if isinstance(sn, PlainSuperNet):
            static[sn_name] = tuple(
                sum(v for n, v in layer_macs.items() if _in_branch(n, sn_name, i))
                for i in range(len(sn.branches)))
    return positions, static


def _fold_batchnorms(model: nn.Module) -> None:
    """Fold every BatchNorm that follows a conv/linear in an ``nn.Sequential`` into it (running
    statistics, as PIT folds them at conversion); any other BatchNorm is refused."""
    folded = set()
    for seq_name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(1, len(seq)):
            layer, bn = seq[i - 1], seq[i]
            if not (isinstance(bn, BATCHNORM_TYPES) and isinstance(layer, SEARCHABLE_TYPES)):
                continue
            fuse = fuse_linear_bn_weights if isinstance(layer, nn.Linear) else fuse_conv_bn_weights
            weight, bias = fuse(layer.weight, layer.bias, bn.running_mean, bn.running_var,
                                bn.eps, bn.weight, bn.bias)
            # trainable, like the weight (torch's fuse leaves a bias it creates frozen)
            layer.weight = nn.Parameter(weight.detach())
            layer.bias = nn.Parameter(bias.detach())
            seq[i] = nn.Identity()
            folded.add(id(bn))
    rest = [name for name, m in model.named_modules()
            if isinstance(m, BATCHNORM_TYPES) and id(m) not in folded]
    if rest:
        raise ValueError(f"PlainSearch: BatchNorm {rest} does not directly follow a conv/linear "
                         "in an nn.Sequential, so it cannot be folded; the plain baseline "
                         "supports folded BatchNorms only")


def _in_branch(name: str, supernet_name: str, index: int) -> bool:
    """Whether qualified module name ``name`` is branch ``index`` of the supernet or inside it."""
    branch = f"{supernet_name}.branches.{index}" if supernet_name else f"branches.{index}"
    return name == branch or name.startswith(branch + ".")


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at qualified name ``name`` of ``model``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


