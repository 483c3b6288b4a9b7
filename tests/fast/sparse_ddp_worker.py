"""Spawn target of the sparse DDP test: a short sparse search on every rank of a gloo group
(every site forced sparse), and the dense single-process run on the whole batch it must equal."""
from pathlib import Path
from typing import Any, Dict

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import plinio.fast.sparse_step as sparse_step
from bench.models import workloads
from plinio.methods import PITSuperNet
from sparse_helpers import prune_randomly

STEPS, PER_RANK_BATCH, INPUT = 2, 2, (3, 16, 16)


def run_search(rank: int, world: int, distributed: bool) -> Dict[str, Any]:
    """The search on this rank's slice of each global batch (the whole batch, dense, when not
    distributed); its final state and, when sparse, the kept sets of the last step."""
    workload = workloads()["resnet8"]
    torch.manual_seed(0)
    search = PITSuperNet(workload.factory(), input_shape=workload.input_shape, sparse=distributed)
    prune_randomly((search,), 0.5, seed=0)
    model = DistributedDataParallel(search) if distributed else search
    optimizer = torch.optim.SGD(search.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        x = torch.randn((PER_RANK_BATCH * world,) + INPUT, generator=gen)
        y = torch.randint(0, 10, (PER_RANK_BATCH * world,), generator=gen)
        if distributed:
            x, y = x.chunk(world)[rank], y.chunk(world)[rank]
        optimizer.zero_grad()
        (F.cross_entropy(model(x), y) + 1e-9 * search.get_regularization_loss()).backward()
        optimizer.step()
    result: Dict[str, Any] = {"state": {k: v.detach().clone() for k, v in search.state_dict().items()}}
    if distributed:
        names = {id(m): n for n, m in search.seed.named_modules()}
        step = search._sparse_runner[0]._last[2]
        result["sets"] = {names[id(key)]: (sets.kept, sets.live) for key, sets in step.sites.items()}
    return result


def worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """Entry point for ``torch.multiprocessing.spawn``."""
    torch.set_num_threads(1)
    sparse_step.sparse_pays = lambda *args: True
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(run_search(rank, world, distributed=True), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
