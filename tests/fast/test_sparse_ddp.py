"""Sparse execution under DDP (gloo, 2 CPU processes): α is identical on every rank, so are the
kept sets, and the search equals the dense one on the whole batch in one process."""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import sparse_ddp_worker

WORLD = 2

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def test_ddp_ranks_share_the_kept_sets_and_equal_the_dense_search(tmp_path) -> None:
    mp.spawn(sparse_ddp_worker.worker, args=(WORLD, str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD,
             join=True)
    first, second = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    assert first["sets"].keys() == second["sets"].keys() and first["sets"]
    pruned = 0
    for name, (kept, live) in first["sets"].items():
        other = second["sets"][name]
        for a, b in zip((kept, live), other):
            assert (a is None and b is None) or torch.equal(a, b), f"{name}: kept sets differ between ranks"
        pruned += kept is not None
    assert pruned > 0
    dense = sparse_ddp_worker.run_search(0, WORLD, distributed=False)["state"]
    for key, value in dense.items():
        assert torch.equal(first["state"][key], second["state"][key]), f"{key} differs between ranks"
        torch.testing.assert_close(first["state"][key], value, rtol=1e-4, atol=1e-5,
                                   msg=lambda m, key=key: f"{key}: {m}")
