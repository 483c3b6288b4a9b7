"""One complete demo run: data → supernet → warm-up → search per strength → export →
fine-tune → evaluation → files (models, plot, JSON)."""
import contextlib
import copy
import time
from typing import Any, Dict, Iterator

import torch

from .config import DemoConfig
from .costs import expected_supernet_cost, model_cost
from .data import DigitsData, load_digits_data
from .export import export_and_check
from .model import supernet_cnn
from .plot import ParetoPoint, plot_pareto
from .report import write_results_json
from .results import DemoResults, SeedResult, StrengthResult
from .search import chosen_branches, fine_tune, search, warm_up, wrap_supernet
from .training import evaluate


@contextlib.contextmanager
def reproducible(seed: int, device: str) -> Iterator[None]:
    """Seed torch and ask for deterministic kernels; restore the caller's setting after.

    On the CPU this makes a run repeatable for a seed. On CUDA some kernels have no
    deterministic version, so there it only warns.
    """
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=(device != "cpu"))
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


def _generator(seed: int, phase: int) -> torch.Generator:
    """CPU generator of the data order of one phase (phase 0: warm-up, i: i-th strength)."""
    return torch.Generator().manual_seed(seed * 1000 + phase)


def _search_one(config: DemoConfig, data: DigitsData, warm_state: Dict[str, Any],
                reference_cost: float, strength: float, phase: int) -> StrengthResult:
    """Search from the warmed-up state with ``strength``, export, fine-tune, save, check."""
    schedule = config.schedule
    label = f"strength {strength:g}"
    # a fresh conversion loaded with the warmed-up state: every strength starts alike
    net = wrap_supernet(supernet_cnn(), data.input_shape, config.regularizer,
                        config.fast).to(config.device)
    net.load_state_dict(warm_state)
    generator = _generator(config.seed, phase)
    history = search(net, data, strength, reference_cost, schedule, generator,
                     config.progress, desc=f"search   {label}")
    net.update_softmax_options(hard=True)
    _, search_val_accuracy = evaluate(net, data.val, schedule.batch_size)
    summary = net.arch_summary()
    exported = net.arch_export().to(config.device)
    tuned = fine_tune(exported, data, schedule, generator, config.progress,
                      desc=f"finetune {label}")
    _, val_accuracy = evaluate(exported, data.val, schedule.batch_size)
    _, test_accuracy = evaluate(exported, data.test, schedule.batch_size)
    files = export_and_check(exported, data.test.images, config.out / "models",
                             f"searched_strength_{strength:g}")
    return StrengthResult(
        strength=strength, chosen_branches=chosen_branches(summary),
        test_accuracy=test_accuracy, val_accuracy=val_accuracy,
        search_val_accuracy=search_val_accuracy,
        cost=model_cost(exported, data.input_shape),
        regularizer_value=float(net.get_regularization_loss().detach()),
        arch_summary=summary,
        files={"torch_export": files.torch_export.relative_to(config.out).as_posix(),
               "onnx": files.onnx.relative_to(config.out).as_posix()},
        torch_export_max_abs_diff=files.torch_export_max_abs_diff,
        onnx_max_abs_diff=files.onnx_max_abs_diff, search=history, finetune=tuned)


def run_demo(config: DemoConfig) -> DemoResults:
    """Run the demo with ``config`` and write its files under ``config.out``."""
    start = time.perf_counter()
    schedule = config.schedule
    with reproducible(config.seed, config.device):
        data = load_digits_data(config.seed).to(torch.device(config.device))
        model = supernet_cnn()
        seed_cost = expected_supernet_cost(model, data.input_shape)
        net = wrap_supernet(model, data.input_shape, config.regularizer,
                            config.fast).to(config.device)
        reference_cost = float(net.get_regularization_loss().detach())
        warmup = warm_up(net, data, schedule, _generator(config.seed, 0), config.progress)
        warm_state = copy.deepcopy(net.state_dict())
        _, seed_val_accuracy = evaluate(net, data.val, schedule.batch_size)
        _, seed_test_accuracy = evaluate(net, data.test, schedule.batch_size)
        seed = SeedResult(test_accuracy=seed_test_accuracy, val_accuracy=seed_val_accuracy,
                          cost=seed_cost, regularizer_value=reference_cost, warmup=warmup)
        rows = [_search_one(config, data, warm_state, reference_cost, strength, phase)
                for phase, strength in enumerate(config.strengths, start=1)]
    plot_path = plot_pareto(
        ParetoPoint("unsearched supernet (θ = 1/n)", seed.cost.macs, seed.test_accuracy),
        [ParetoPoint(f"λ={r.strength:g}", r.cost.macs, r.test_accuracy) for r in rows],
        config.out / "pareto.png",
        title=f"PIT-SuperNet on digits: accuracy vs MACs ({config.regularizer} regularizer)")
    results = DemoResults(options=config_to_options(config), seed=seed, rows=rows,
                          plot=plot_path.relative_to(config.out).as_posix())
    results.wall_time_s = time.perf_counter() - start
    write_results_json(results, config.out / "results.json")
    return results


def config_to_options(config: DemoConfig) -> Dict[str, Any]:
    """The options of a run, as plain JSON-friendly values."""
    s = config.schedule
    return {"device": config.device, "regularizer": config.regularizer,
            "strengths": list(config.strengths), "seed": config.seed, "fast": config.fast,
            "warmup_epochs": s.warmup_epochs, "search_epochs": s.search_epochs,
            "finetune_epochs": s.finetune_epochs, "batch_size": s.batch_size,
            "torch": torch.__version__, "threads": torch.get_num_threads()}
