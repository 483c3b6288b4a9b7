"""The DNAS recipe on the demo network, written with PLiNIO's public API only.

wrap (``PITSuperNet``) → warm up the weights (architecture frozen by giving the optimizer
``net_parameters()`` only) → search with ``task loss + strength × cost`` (two optimizers:
``net_parameters()`` and ``nas_parameters()``, softmax temperature annealed with
``update_softmax_options``) → ``arch_export()`` → fine-tune the exported plain network.
The hand-picked baselines get the same weight training without the search.
"""
import copy
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from plinio.methods import PITSuperNet

from .config import Schedule
from .data import DigitsData
from .model import BLOCK_WIDTHS, branch_names
from .training import EpochResult, evaluate, train


def wrap_supernet(model: nn.Module, input_shape: Tuple[int, ...], regularizer: str,
                  fast: bool, targets: Sequence[Tuple[str, float]] = ()) -> PITSuperNet:
    """Convert the supernet CNN for the search (PIT inside and outside the branches too).

    ``peak_memory`` (as regularizer or target) is added with ``cost=``; with ``targets`` the
    regularization loss is the target loss (README "Costs and budgets")."""
    peak = regularizer == "peak_memory" or any(name == "peak_memory" for name, _ in targets)
    cost = {"peak_memory": "peak_memory"} if peak else None
    if targets:
        return PITSuperNet(model, input_shape=input_shape, cost=cost, targets=dict(targets), fast=fast)
    return PITSuperNet(model, input_shape=input_shape, regularizer=regularizer, cost=cost, fast=fast)


def warm_up(net: PITSuperNet, data: DigitsData, schedule: Schedule,
            generator: torch.Generator, progress: bool) -> List[EpochResult]:
    """Train the weights of every branch with the architecture left at its initial values."""
    optimizer = torch.optim.Adam(net.net_parameters(), lr=schedule.net_lr)
    return train(net, data, epochs=schedule.warmup_epochs, optimizers=[optimizer],
                 batch_size=schedule.batch_size, generator=generator,
                 desc="warm-up", progress=progress)


def temperature_at(epoch: int, schedule: Schedule) -> float:
    """Softmax temperature of search epoch ``epoch``: geometric from initial to final."""
    if schedule.search_epochs <= 1:
        return schedule.initial_temperature
    ratio = schedule.final_temperature / schedule.initial_temperature
    return schedule.initial_temperature * ratio ** (epoch / (schedule.search_epochs - 1))


def search(net: PITSuperNet, data: DigitsData, strength: Optional[float], reference_cost: float,
           schedule: Schedule, generator: torch.Generator, progress: bool,
           desc: str) -> List[EpochResult]:
    """Jointly train weights and architecture with the cost regularizer.

    The regularizer is divided by ``reference_cost`` (the unsearched network's value), so a
    strength means the same for the 'macs' and 'size' regularizers: at strength 1 removing
    the whole cost is worth one nat of cross-entropy. A wrapper with targets adds its target
    loss as it is (``strength`` and ``reference_cost`` unused): its strengths grow by
    themselves, with ``update_targets()`` after every epoch.
    """
    net_optimizer = torch.optim.Adam(net.net_parameters(), lr=schedule.net_lr)
    nas_optimizer = torch.optim.Adam(net.nas_parameters(), lr=schedule.nas_lr)

    def anneal(epoch: int) -> None:
        net.update_softmax_options(temperature=temperature_at(epoch, schedule))

    bounded = net.cost_targets is not None
    return train(net, data, epochs=schedule.search_epochs,
                 optimizers=[net_optimizer, nas_optimizer], batch_size=schedule.batch_size,
                 generator=generator, desc=desc, progress=progress,
                 cost=net.get_regularization_loss if bounded
                 else lambda: net.get_regularization_loss() / reference_cost,
                 strength=1.0 if bounded else strength, on_epoch_start=anneal,
                 on_epoch_end=(lambda _: net.update_targets()) if bounded else None)


def chosen_branches(summary: Mapping[str, Mapping[str, object]]) -> Dict[str, str]:
    """Branch kind that ``arch_export()`` keeps in each block (largest architectural weight)."""
    chosen: Dict[str, str] = {}
    for block in BLOCK_WIDTHS:
        entry = summary.get(block)
        if not isinstance(entry, Mapping) or "supernet_branches" not in entry:
            raise KeyError(f"arch_summary() has no supernet entry for {block!r}; "
                           f"keys: {sorted(summary)}")
        branches = entry["supernet_branches"]
        names = branch_names(block)
        weights = [float(branches[f"branch_{i}"]["alpha"]) for i in range(len(names))]
        chosen[block] = names[max(range(len(names)), key=weights.__getitem__)]
    return chosen


def fine_tune(model: nn.Module, data: DigitsData, schedule: Schedule,
              generator: torch.Generator, progress: bool, desc: str) -> List[EpochResult]:
    """Train every parameter of an exported network; keep the best validation epoch.

    The weights of the epoch with the highest validation accuracy (the export itself counts
    as epoch -1) are loaded back into ``model`` at the end.
    """
    _, start_accuracy = evaluate(model, data.val, schedule.batch_size)
    best = {"accuracy": start_accuracy, "state": copy.deepcopy(model.state_dict())}

    def keep_best(result: EpochResult) -> None:
        if result.val_accuracy > best["accuracy"]:
            best["accuracy"] = result.val_accuracy
            best["state"] = copy.deepcopy(model.state_dict())

    optimizer = torch.optim.Adam(model.parameters(), lr=schedule.finetune_lr)
    history = train(model, data, epochs=schedule.finetune_epochs, optimizers=[optimizer],
                    batch_size=schedule.batch_size, generator=generator, desc=desc,
                    progress=progress, on_epoch_end=keep_best)
    model.load_state_dict(best["state"])
    return history


def train_fixed_choice(model: nn.Module, data: DigitsData, schedule: Schedule,
                       generator: torch.Generator, progress: bool,
                       label: str) -> Tuple[List[EpochResult], List[EpochResult]]:
    """Train a hand-picked plain network with a searched network's weight budget.

    A searched network's weights are trained for the warm-up plus search epochs (Adam at
    ``net_lr``) and then fine-tuned after export; ``model`` gets the same epochs and
    learning rates, then the same ``fine_tune``. Nothing is pruned: every channel is kept.
    Returns the histories of the two phases.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=schedule.net_lr)
    training = train(model, data, epochs=schedule.warmup_epochs + schedule.search_epochs,
                     optimizers=[optimizer], batch_size=schedule.batch_size,
                     generator=generator, desc=f"train    {label}", progress=progress)
    tuned = fine_tune(model, data, schedule, generator, progress, desc=f"finetune {label}")
    return training, tuned
