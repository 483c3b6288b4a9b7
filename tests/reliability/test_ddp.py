"""DDP with gloo on 2 CPU processes: one search, not two (SPEC issue 7, item 2)."""
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import ddp_worker
import search_setup

WORLD, STEPS = 2, 4

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory):
    """Results of both ranks (spawned once for all tests of this module)."""
    folder = tmp_path_factory.mktemp("ddp")
    mp.spawn(ddp_worker.ddp_worker, args=(WORLD, str(folder / "init"), str(folder), STEPS),
             nprocs=WORLD, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("kind", search_setup.KINDS)
def test_ranks_hold_identical_architecture_and_weights(ranks, kind: str) -> None:
    first, second = ranks[0][kind], ranks[1][kind]
    assert first["state"].keys() == second["state"].keys()
    for key, value in first["state"].items():
        assert torch.equal(value, second["state"][key]), f"{key} differs between ranks"
    for step, (a, b) in enumerate(zip(first["noise"], second["noise"])):
        assert all(torch.equal(x, y) for x, y in zip(a, b)), f"Gumbel noise differs at {step}"


@pytest.mark.parametrize("kind", search_setup.KINDS)
def test_ranks_export_the_same_network(ranks, kind: str) -> None:
    first, second = ranks[0][kind], ranks[1][kind]
    assert first["summary"] == second["summary"]
    assert first["exported_structure"] == second["exported_structure"]
    assert first["exported"].keys() == second["exported"].keys()
    for key, value in first["exported"].items():
        assert torch.equal(value, second["exported"][key]), key


@pytest.mark.parametrize("kind", search_setup.KINDS)
def test_ddp_equals_one_process_on_the_concatenated_batch(ranks, kind: str) -> None:
    reference = ddp_worker.reference_run(kind, STEPS, WORLD)
    got = ranks[0][kind]
    for step, (a, b) in enumerate(zip(got["noise"], reference["noise"])):
        assert all(torch.equal(x, y) for x, y in zip(a, b)), f"Gumbel noise differs at {step}"
    for key, value in reference["state"].items():
        if value.is_floating_point():
            torch.testing.assert_close(got["state"][key], value, rtol=1e-5, atol=1e-6,
                                       msg=lambda m: f"{key}: {m}")
        else:
            assert torch.equal(got["state"][key], value), key
    initial = search_setup.state_copy(search_setup.build_search(kind, seed=0, batchnorm=False))
    moved = sum(not torch.equal(initial[k], v) for k, v in reference["state"].items()
                if v.is_floating_point())
    assert moved > 0, "the search did not change any parameter: the comparison is vacuous"
    assert got["exported_structure"] == reference["exported_structure"]
