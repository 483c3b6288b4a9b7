"""Supernet costs: static branch costs (docs/behaviour.md §4.2), run-time size/MACs (§4.3) and ICV (§3.3).

Static costs are measured once, at conversion, on the original branches. At run time the
costs are a handful of tensor operations over the concatenated θ of all combiners and the
per-layer cost vectors of the PIT cost model; a looped reference formulation gives the same
values and is used when the fast paths are switched off.
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn as nn

from plinio.cost.plain_counts import direct_param_count, forward_macs
from plinio.methods.pit.network_costs import NetworkCosts

from .nn.combiner import PITSuperNetCombiner


@dataclass(frozen=True)
class BranchStaticCosts:
    """Size and MACs of every branch of one supernet, measured before conversion."""

    size: Tuple[int, ...]
    macs: Tuple[int, ...]


def measure_branch_static_costs(
        model: nn.Module, supernets: Dict[str, Sequence[nn.Module]],
        run_model: Callable[[], None]) -> Dict[str, BranchStaticCosts]:
    """Static size and MACs of each branch (docs/behaviour.md §4.2).

    ``supernets`` maps each supernet's qualified name to its (unconverted) branches;
    ``run_model`` runs ``model`` once on a batch-1 example. Size is the number of parameters
    of the branch; MACs sum the MACs of the branch's parametric layers over their calls
    (``plinio.cost.plain_counts``). The model is run in eval mode without gradients and its
    training flags are restored afterwards.
    """
    owners: Dict[int, List[Tuple[str, int]]] = {}
    layers: Dict[int, nn.Module] = {}
    for sn_name, branches in supernets.items():
        for idx, branch in enumerate(branches):
            for module in branch.modules():
                if direct_param_count(module) > 0:
                    owners.setdefault(id(module), []).append((sn_name, idx))
                    layers[id(module)] = module
    macs = {(sn_name, idx): 0 for sn_name, branches in supernets.items()
            for idx in range(len(branches))}
    for layer_id, count in forward_macs(model, layers, run_model).items():
        for key in owners[layer_id]:
            macs[key] += count

    result: Dict[str, BranchStaticCosts] = {}
    for sn_name, branches in supernets.items():
        sizes = tuple(sum(p.numel() for p in branch.parameters()) for branch in branches)
        result[sn_name] = BranchStaticCosts(
            size=sizes, macs=tuple(macs[(sn_name, i)] for i in range(len(branches))))
    return result


def branch_prefix(supernet_name: str, branch_index: int) -> str:
    """Qualified name of branch ``branch_index`` of the supernet called ``supernet_name``."""
    base = f"sn_input_layers.{branch_index}"
    return f"{supernet_name}.{base}" if supernet_name else base


def layer_branch_index(layer_names: Sequence[str], supernet_names: Sequence[str],
                       n_branches: Sequence[int]) -> List[int]:
    """For each PIT layer, the flat index of the branch it lives in (total branches if none)."""
    total = sum(n_branches)
    prefixes: List[Tuple[str, int]] = []
    offset = 0
    for sn_name, n in zip(supernet_names, n_branches):
        for i in range(n):
            prefixes.append((branch_prefix(sn_name, i), offset + i))
        offset += n
    index: List[int] = []
    for name in layer_names:
        found = total
        for prefix, flat in prefixes:
            if name == prefix or name.startswith(prefix + "."):
                found = flat
                break
        index.append(found)
    return index


def batched_theta(combiners: Sequence[PITSuperNetCombiner], segment: torch.Tensor,
                  position: torch.Tensor, inv_n: torch.Tensor, max_n: int) -> torch.Tensor:
    """θ of every combiner, concatenated, with a fixed number of tensor ops.

    Equals ``torch.cat([c.theta_alpha for c in combiners])``: each supernet's logits are
    scattered into a row of a (-inf)-padded matrix so one row-wise softmax serves them all.
    """
    def expand(flag_of: Callable[[PITSuperNetCombiner], torch.Tensor]) -> torch.Tensor:
        return torch.cat([flag_of(c).reshape(1).expand(c.n_branches) for c in combiners])

    alpha = torch.cat([c.alpha for c in combiners])
    trainable = expand(lambda c: c.selection_trainable)
    alpha = torch.where(trainable, alpha, alpha.detach())
    noise = torch.cat([c.gumbel_noise for c in combiners]).to(alpha.dtype)
    temperature = expand(lambda c: c.temperature).to(alpha.dtype)
    logits = (alpha + noise) / temperature
    padded = logits.new_full((len(combiners), max_n), float("-inf"))
    padded = padded.index_put((segment, position), logits)
    soft = torch.softmax(padded, dim=1)[segment, position]
    winner = torch.argmax(padded.detach(), dim=1)[segment]
    one_hot = (position == winner).to(soft.dtype)
    straight_through = [c.gumbel_softmax and c.training for c in combiners]
    if all(straight_through):
        hard_theta = one_hot + (soft - soft.detach())
    elif any(straight_through):
        st_mask = torch.cat([torch.full((c.n_branches,), float(st), dtype=soft.dtype,
                                        device=soft.device)
                             for c, st in zip(combiners, straight_through)])
        hard_theta = one_hot + st_mask * (soft - soft.detach())
    else:
        hard_theta = one_hot
    theta = torch.where(expand(lambda c: c.hard), hard_theta, soft)
    return torch.where(expand(lambda c: c.has_forwarded), theta, inv_n.to(theta.dtype))


class SuperNetCosts(nn.Module):
    """Run-time supernet costs (docs/behaviour.md §4.3) and ICV (§3.3), fast and reference formulations.

    ``layer_costs`` is the PIT cost model's ``layer_costs`` (per-layer size and MACs vectors
    in the order of ``layer_names``); size and MACs add the static residuals (static cost −
    PIT cost at conversion, per branch). Every other cost comes from ``network``: a
    per-layer spec weighs each row by the θ of the branch it lies in (no residual), peak
    memory reads θ in the graph order of the combiners (``merge_order``: for each merge node
    of ``network``, the index of its supernet in ``supernet_names``). All index tensors and
    residuals are non-persistent buffers, so they follow ``.to(device)`` without entering the
    ``state_dict``.
    """

    def __init__(self, supernet_names: Sequence[str], combiners: Sequence[PITSuperNetCombiner],
                 static: Dict[str, BranchStaticCosts], layer_names: Sequence[str],
                 layer_costs: Callable[[bool], Tuple[torch.Tensor, torch.Tensor]],
                 network: NetworkCosts, merge_order: Sequence[int]) -> None:
        super().__init__()
        self.supernet_names = list(supernet_names)
        # plain lists: the combiners and the network costs are owned by the wrapper
        self._combiners = list(combiners)
        self._network = (network,)
        self._layer_costs = layer_costs
        self.layer_names = list(layer_names)
        n_branches = [c.n_branches for c in combiners]
        self.n_branches = n_branches
        self.max_n = max(n_branches) if n_branches else 1
        segment = [s for s, n in enumerate(n_branches) for _ in range(n)]
        position = [i for n in n_branches for i in range(n)]
        self.register_buffer("segment", torch.tensor(segment, dtype=torch.long), persistent=False)
        self.register_buffer("position", torch.tensor(position, dtype=torch.long),
                             persistent=False)
        self.register_buffer("inv_n", torch.tensor([1.0 / n for n in n_branches for _ in range(n)],
                                                   dtype=torch.float32), persistent=False)
        self.register_buffer("n_per_supernet", torch.tensor(n_branches, dtype=torch.float32),
                             persistent=False)
        self.register_buffer("var_denominator",
                             torch.tensor([max(n - 1, 1) for n in n_branches],
                                          dtype=torch.float32), persistent=False)
        offsets = [sum(n_branches[:s]) for s in range(len(n_branches))]
        self.register_buffer("graph_theta_index", torch.tensor(
            [offsets[s] + i for s in merge_order for i in range(n_branches[s])], dtype=torch.long),
            persistent=False)
        layer_branch = layer_branch_index(layer_names, supernet_names, n_branches)
        self.layer_branch_list = layer_branch
        self.register_buffer("layer_branch", torch.tensor(layer_branch, dtype=torch.long),
                             persistent=False)
        self.row_branch_list = layer_branch_index(network.owners, supernet_names, n_branches)
        self.register_buffer("row_branch", torch.tensor(self.row_branch_list, dtype=torch.long),
                             persistent=False)
        with torch.no_grad():
            size0, macs0 = layer_costs(False)
            total = sum(n_branches)
            pit_size0 = torch.zeros(total + 1, dtype=torch.float64)
            pit_macs0 = torch.zeros(total + 1, dtype=torch.float64)
            index = torch.tensor(layer_branch, dtype=torch.long)
            pit_size0.index_add_(0, index, size0.detach().to("cpu", torch.float64))
            pit_macs0.index_add_(0, index, macs0.detach().to("cpu", torch.float64))
            static_size = torch.tensor([v for s in supernet_names for v in static[s].size],
                                       dtype=torch.float64)
            static_macs = torch.tensor([v for s in supernet_names for v in static[s].macs],
                                       dtype=torch.float64)
        self.register_buffer("residual_size", (static_size - pit_size0[:total]).float(),
                             persistent=False)
        self.register_buffer("residual_macs", (static_macs - pit_macs0[:total]).float(),
                             persistent=False)
        self.static = {s: static[s] for s in supernet_names}
        self.to(size0.device)

    # ---------------------------------------------------------------- θ
    def theta_all(self) -> torch.Tensor:
        """Concatenated θ of all supernets (in ``supernet_names`` order)."""
        if not self._combiners:
            return self.inv_n
        return batched_theta(self._combiners, self.segment, self.position, self.inv_n,
                             self.max_n)

    def exported_theta(self, theta: torch.Tensor) -> torch.Tensor:
        """One-hot of the branch export keeps (argmax α) in each supernet, with the gradient
        of ``theta`` (straight-through)."""
        if not self._combiners:
            return theta
        alpha = torch.cat([c.alpha for c in self._combiners]).detach()
        padded = alpha.new_full((len(self._combiners), self.max_n), float("-inf"))
        padded = padded.index_put((self.segment, self.position), alpha)
        winner = torch.argmax(padded, dim=1)[self.segment]
        return (self.position == winner).to(theta.dtype) + (theta - theta.detach())

    def _looped_thetas(self, binarized: bool) -> List[torch.Tensor]:
        thetas = []
        for combiner in self._combiners:
            theta = combiner.theta_alpha
            if binarized:
                one_hot = torch.zeros_like(theta)
                one_hot[combiner.best_layer_index()] = 1.0
                theta = one_hot + (theta - theta.detach())
            thetas.append(theta)
        return thetas

    # ---------------------------------------------------------------- costs
    def cost(self, name: str, fast: bool = True, binarized: bool = False) -> torch.Tensor:
        """Network cost ``name``, a 0-dim tensor: 'size' or 'macs' per docs/behaviour.md §4.3
        (float32), or a cost of the network costs (in the dtype of the mask parameters).
        ``binarized``: binarized masks and the argmax branches (the exported network)."""
        network = self._network[0]
        if fast:
            theta = self.theta_all()
            theta = self.exported_theta(theta) if binarized else theta
        else:
            looped = self._looped_thetas(binarized)
            theta = torch.cat(looped) if looped else self.inv_n
        if name in network.peak_names:
            graph_theta = theta[self.graph_theta_index] if self._combiners else None
            return network.peak(name, binarized, graph_theta)
        if name in ("size", "macs"):
            sizes, macs = self._layer_costs(binarized)
            per_layer = sizes if name == "size" else macs
            residual = self.residual_size if name == "size" else self.residual_macs
            branch, branch_list = self.layer_branch, self.layer_branch_list
        else:
            per_layer = network.per_row(binarized)[name]
            residual = torch.zeros_like(self.residual_size)
            branch, branch_list = self.row_branch, self.row_branch_list
        total = self._fast_cost(per_layer, residual, theta, branch) if fast \
            else self._reference_cost(per_layer, residual, looped, branch_list)
        return total.to(torch.float32) if name in ("size", "macs") else total + network.constant(name)

    def _fast_cost(self, per_layer: torch.Tensor, residual: torch.Tensor, theta: torch.Tensor,
                   branch: torch.Tensor) -> torch.Tensor:
        theta = theta.to(per_layer.dtype) if self._combiners else residual[:0]
        weights = torch.cat([theta, theta.new_ones(1)])[branch]
        return torch.dot(theta, residual.to(theta.dtype)) + torch.dot(weights, per_layer)

    def _reference_cost(self, per_layer: torch.Tensor, residual: torch.Tensor,
                        thetas: Sequence[torch.Tensor], branch_list: Sequence[int]) -> torch.Tensor:
        total = per_layer.new_zeros(())
        outside = len(residual)
        for l_idx, flat in enumerate(branch_list):
            if flat == outside:
                total = total + per_layer[l_idx]
        flat = 0
        for theta, combiner in zip(thetas, self._combiners):
            for i in range(combiner.n_branches):
                branch_cost = residual[flat]
                for l_idx, owner in enumerate(branch_list):
                    if owner == flat:
                        branch_cost = branch_cost + per_layer[l_idx]
                total = total + theta[i] * branch_cost
                flat += 1
        return total

    # ---------------------------------------------------------------- ICV
    def total_icv(self, eps: float = 1e-3, fast: bool = True) -> torch.Tensor:
        """Σ over supernets of mean(θ)² / (var(θ) + eps), unbiased variance (0 for n = 1)."""
        if not self._combiners:
            return self.inv_n.new_zeros(())
        if fast:
            theta = self.theta_all()
            n = self.n_per_supernet.to(theta.dtype)
            sums = theta.new_zeros(len(self._combiners)).index_add(0, self.segment, theta)
            mean = sums / n
            dev = (theta - mean[self.segment]) ** 2
            var = dev.new_zeros(len(self._combiners)).index_add(0, self.segment, dev)
            var = var / self.var_denominator.to(theta.dtype)
            return (mean ** 2 / (var + eps)).sum().to(torch.float32)
        total = self.inv_n.new_zeros(())
        for combiner in self._combiners:
            theta = combiner.theta_alpha
            var = torch.var(theta) if combiner.n_branches > 1 else theta.new_zeros(())
            total = total + theta.mean() ** 2 / (var + eps)
        return total.to(torch.float32)
