"""One complete demo run, repeated per seed: data → supernet → warm-up → search per strength
→ export → fine-tune → evaluation, and the fixed-choice baselines trained alike; then the
files (models, plot, JSON)."""
import contextlib
import copy
import time
import zlib
from typing import Any, Dict, Iterator, Optional, Tuple

import torch

from .config import DemoConfig
from .costs import expected_supernet_cost, measured_costs, model_cost
from .data import DigitsData, load_digits_data
from .export import export_and_check
from .machine import machine_info
from .model import FIXED_KINDS, fixed_choice_cnn, supernet_cnn
from .plot import plot_pareto
from .report import write_results_json
from .results import DemoResults, FixedResult, SearchedResult, SeedRun, UnsearchedResult, target_tag
from .search import (chosen_branches, fine_tune, search, train_fixed_choice, warm_up,
                     wrap_supernet)
from .summary import summarize
from .training import evaluate


@contextlib.contextmanager
def reproducible(seed: int, device: str) -> Iterator[None]:
    """Seed torch and ask for deterministic kernels; restore the caller's setting after.

    On the CPU this makes a run repeatable for a seed on the same machine. On CUDA some
    kernels have no deterministic version, so there it only warns.
    """
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=(device != "cpu"))
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


def phase_seed(seed: int, phase: str) -> int:
    """Seed of one phase of a run ('warm-up', 'strength 0.1', 'fixed conv3x3'): each phase
    draws from its own stream, so adding a strength leaves the other phases' results alone."""
    return (seed << 32) | zlib.crc32(phase.encode())


def _generator(seed: int, phase: str) -> torch.Generator:
    """CPU generator of the data order of one phase."""
    return torch.Generator().manual_seed(phase_seed(seed, phase))


def searched_costs(config: DemoConfig) -> Tuple[str, ...]:
    """The costs a search reduces or bounds: the regularizer, then the targets'."""
    return tuple(dict.fromkeys([config.regularizer, *(name for name, _ in config.targets)]))


def _search_one(config: DemoConfig, data: DigitsData, seed: int, warm_state: Dict[str, Any],
                reference_cost: float, strength: Optional[float]) -> SearchedResult:
    """Search from the warmed-up state with ``strength`` (None: to the targets), export,
    fine-tune, save, check."""
    schedule = config.schedule
    label = f"strength {strength:g}" if strength is not None else f"target {target_tag(config.targets)}"
    # a fresh conversion loaded with the warmed-up state: every strength starts alike
    net = wrap_supernet(supernet_cnn(), data.input_shape, config.regularizer,
                        config.fast, config.targets).to(config.device)
    net.load_state_dict(warm_state)
    generator = _generator(seed, label)
    history = search(net, data, strength, reference_cost, schedule, generator,
                     config.progress, desc=f"search   {label}")
    net.update_softmax_options(hard=True)
    _, search_val_accuracy = evaluate(net, data.val, schedule.batch_size)
    summary = net.arch_summary()
    names = searched_costs(config)
    predicted = {name: float(net.get_cost(name, binarized=True).detach()) for name in names}
    exported = net.arch_export().to(config.device)
    measured = measured_costs(exported, data.input_shape, names)
    tuned = fine_tune(exported, data, schedule, generator, config.progress,
                      desc=f"finetune {label}")
    _, val_accuracy = evaluate(exported, data.val, schedule.batch_size)
    _, test_accuracy = evaluate(exported, data.test, schedule.batch_size)
    stem = f"strength_{strength:g}" if strength is not None \
        else "target_" + "_".join(f"{name}-{value:g}" for name, value in config.targets)
    files = export_and_check(exported, data.test.images, config.out / "models" / f"seed_{seed}", stem)
    return SearchedResult(
        strength=strength, chosen_branches=chosen_branches(summary),
        test_accuracy=test_accuracy, val_accuracy=val_accuracy,
        search_val_accuracy=search_val_accuracy,
        cost=model_cost(exported, data.input_shape),
        regularizer_value=float(net.get_regularization_loss().detach()),
        arch_summary=summary,
        files={"torch_export": files.torch_export.relative_to(config.out).as_posix(),
               "onnx": files.onnx.relative_to(config.out).as_posix()},
        torch_export_max_abs_diff=files.torch_export_max_abs_diff,
        onnx_max_abs_diff=files.onnx_max_abs_diff, search=history, finetune=tuned,
        targets=dict(config.targets), predicted=predicted, measured=measured)


def _train_fixed(config: DemoConfig, data: DigitsData, seed: int, kind: str) -> FixedResult:
    """Train the network with every block of ``kind`` for a searched network's epochs."""
    label = f"fixed {kind}"
    torch.manual_seed(phase_seed(seed, label))
    model = fixed_choice_cnn(kind).to(config.device)
    training, tuned = train_fixed_choice(model, data, config.schedule,
                                         _generator(seed, label), config.progress, label)
    _, val_accuracy = evaluate(model, data.val, config.schedule.batch_size)
    _, test_accuracy = evaluate(model, data.test, config.schedule.batch_size)
    return FixedResult(kind=kind, test_accuracy=test_accuracy, val_accuracy=val_accuracy,
                       cost=model_cost(model, data.input_shape), training=training,
                       finetune=tuned)


def _run_seed(config: DemoConfig, seed: int) -> SeedRun:
    """The whole workflow with one seed (split, initial weights, data order)."""
    schedule = config.schedule
    with reproducible(seed, config.device):
        data = load_digits_data(seed).to(torch.device(config.device))
        model = supernet_cnn()
        unsearched_cost = expected_supernet_cost(model, data.input_shape)
        net = wrap_supernet(model, data.input_shape, config.regularizer,
                            config.fast, config.targets).to(config.device)
        reference_cost = float(net.get_cost(config.regularizer).detach())
        warmup = warm_up(net, data, schedule, _generator(seed, "warm-up"), config.progress)
        warm_state = copy.deepcopy(net.state_dict())
        _, val_accuracy = evaluate(net, data.val, schedule.batch_size)
        _, test_accuracy = evaluate(net, data.test, schedule.batch_size)
        unsearched = UnsearchedResult(test_accuracy=test_accuracy, val_accuracy=val_accuracy,
                                      cost=unsearched_cost, regularizer_value=reference_cost,
                                      warmup=warmup)
        searched = [_search_one(config, data, seed, warm_state, reference_cost, strength)
                    for strength in (config.strengths or [None])]
        fixed = [_train_fixed(config, data, seed, kind) for kind in FIXED_KINDS]
    return SeedRun(seed=seed, unsearched=unsearched, searched=searched, fixed=fixed)


def run_demo(config: DemoConfig) -> DemoResults:
    """Run the demo with ``config`` and write its files under ``config.out``."""
    start = time.perf_counter()
    runs = [_run_seed(config, seed) for seed in config.seeds]
    seeds = ", ".join(str(seed) for seed in config.seeds)
    spread = "" if len(config.seeds) == 1 else ", mean and min–max"
    how = f"targets {target_tag(config.targets)}" if config.targets else f"{config.regularizer} regularizer"
    plot_path = plot_pareto(
        summarize(runs), config.out / "pareto.png",
        title=f"PIT-SuperNet on digits ({how}): test accuracy vs MACs\n"
              f"seed{'s' if len(config.seeds) > 1 else ''} {seeds}{spread}")
    results = DemoResults(options=config_to_options(config),
                          machine=machine_info(config.device), runs=runs,
                          plot=plot_path.relative_to(config.out).as_posix())
    results.wall_time_s = time.perf_counter() - start
    write_results_json(results, config.out / "results.json")
    return results


def config_to_options(config: DemoConfig) -> Dict[str, Any]:
    """The options of a run, as plain JSON-friendly values."""
    s = config.schedule
    return {"device": config.device, "regularizer": config.regularizer,
            "strengths": list(config.strengths), "targets": dict(config.targets),
            "seeds": list(config.seeds),
            "fast": config.fast, "warmup_epochs": s.warmup_epochs,
            "search_epochs": s.search_epochs, "finetune_epochs": s.finetune_epochs,
            "batch_size": s.batch_size}
