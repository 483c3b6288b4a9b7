"""Spawn target of the DDP test: the same short search on every rank of a gloo group, plus
the single-process run on the concatenated batch that it must equal."""
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import search_setup

PER_RANK_BATCH = 3
NOISE_SEED = 42
# name -> (model kind, freeze during the run: PIT mask kinds / supernet branch selection);
# DDP never gets find_unused_parameters
SCENARIOS = {
    "pit": ("pit", False),
    "supernet": ("supernet", False),
    # hard selection with α frozen: the fast path runs only the chosen branch
    "supernet_freeze_selection": ("supernet", True),
    # freezing a mask kind after wrapping
    "pit_freeze": ("pit", True),
}


def global_batches(kind: str, steps: int, batch: int) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """The whole data of the run, from a private generator (identical in every process)."""
    gen = torch.Generator().manual_seed(123)
    shape = search_setup.input_shape(kind)
    return [(torch.randn(batch, *shape, generator=gen),
             torch.randint(0, search_setup.N_CLASSES, (batch,), generator=gen))
            for _ in range(steps)]


def _optimizers(search: nn.Module) -> List[torch.optim.Optimizer]:
    return [torch.optim.SGD(search.net_parameters(), lr=0.05),
            torch.optim.SGD(search.nas_parameters(), lr=0.05)]


def _gumbel_noise(search: nn.Module) -> List[torch.Tensor]:
    return [m.gumbel_noise.detach().clone() for m in search.modules()
            if hasattr(m, "gumbel_noise")]


def run_search(scenario: str, steps: int, rank: int, world: int,
               distributed: bool) -> Dict[str, Any]:
    """Run ``steps`` steps on this rank's slice of each global batch (the whole batch when
    not distributed) and describe the result."""
    kind, freeze = SCENARIOS[scenario]
    search = search_setup.build_search(kind, seed=0, batchnorm=False)
    model: nn.Module = search
    if distributed:
        model = DistributedDataParallel(search)
    optimizers = _optimizers(search)
    data = global_batches(kind, steps, PER_RANK_BATCH * world)
    torch.manual_seed(NOISE_SEED)  # same Gumbel noise on every rank
    noise: List[List[torch.Tensor]] = []
    for step, (x, y) in enumerate(data):
        if distributed:
            x, y = x.chunk(world)[rank], y.chunk(world)[rank]
        search_setup.search_step(search, model, optimizers, kind, step, x, y, freeze=freeze)
        noise.append(_gumbel_noise(search))
    search.eval()
    exported = search.arch_export()
    return {
        "state": search_setup.state_copy(search),
        "noise": noise,
        "summary": repr(search.arch_summary()),
        "exported": {k: v.detach().clone() for k, v in exported.state_dict().items()},
        "exported_structure": repr(exported),
    }


def ddp_worker(rank: int, world: int, init_file: str, out_dir: str, steps: int) -> None:
    """Entry point for ``torch.multiprocessing.spawn``: every scenario in one group; a
    scenario that raises is recorded as its error message."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    results: Dict[str, Any] = {}
    try:
        for scenario in SCENARIOS:
            try:
                results[scenario] = run_search(scenario, steps, rank, world, distributed=True)
            except RuntimeError as err:
                results[scenario] = {"error": str(err)}
                break  # the group may be unusable after a failed collective
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
