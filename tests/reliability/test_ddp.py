"""DDP with gloo on 2 CPU processes: one search, not two (issue 7, item 2)."""
from typing import Any, Dict, List

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import ddp_worker
import search_setup

WORLD, STEPS = 2, 4
EXACT = ("pit", "supernet", "supernet_freeze_selection", "pit_freeze")

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> List[Dict[str, Any]]:
    """Results of both ranks (spawned once for all tests of this module)."""
    folder = tmp_path_factory.mktemp("ddp")
    mp.spawn(ddp_worker.ddp_worker, args=(WORLD, str(folder / "init"), str(folder), STEPS),
             nprocs=WORLD, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def _result(ranks: List[Dict[str, Any]], rank: int, scenario: str) -> Dict[str, Any]:
    result = ranks[rank].get(scenario)
    assert result is not None, f"{scenario} did not run (an earlier scenario failed)"
    assert "error" not in result, f"{scenario} failed under DDP: {result.get('error')}"
    return result


@pytest.mark.parametrize("scenario", EXACT)
def test_ranks_hold_identical_architecture_and_weights(ranks, scenario: str) -> None:
    first, second = _result(ranks, 0, scenario), _result(ranks, 1, scenario)
    assert first["state"].keys() == second["state"].keys()
    for key, value in first["state"].items():
        assert torch.equal(value, second["state"][key]), f"{key} differs between ranks"
    for step, (a, b) in enumerate(zip(first["noise"], second["noise"])):
        assert all(torch.equal(x, y) for x, y in zip(a, b)), f"Gumbel noise differs at {step}"


@pytest.mark.parametrize("scenario", EXACT)
def test_ranks_export_the_same_network(ranks, scenario: str) -> None:
    first, second = _result(ranks, 0, scenario), _result(ranks, 1, scenario)
    assert first["summary"] == second["summary"]
    assert first["exported_structure"] == second["exported_structure"]
    assert first["exported"].keys() == second["exported"].keys()
    for key, value in first["exported"].items():
        assert torch.equal(value, second["exported"][key]), key


@pytest.mark.parametrize("scenario", EXACT)
def test_ddp_equals_one_process_on_the_concatenated_batch(ranks, scenario: str) -> None:
    reference = ddp_worker.run_search(scenario, STEPS, 0, WORLD, distributed=False)
    got = _result(ranks, 0, scenario)
    if scenario == "supernet":  # Gumbel noise was really drawn, not left at zero
        assert any(bool(n.abs().sum() > 0) for step in got["noise"] for n in step)
    for step, (a, b) in enumerate(zip(got["noise"], reference["noise"])):
        assert all(torch.equal(x, y) for x, y in zip(a, b)), f"Gumbel noise differs at {step}"
    for key, value in reference["state"].items():
        if value.is_floating_point():
            torch.testing.assert_close(got["state"][key], value, rtol=1e-5, atol=1e-6,
                                       msg=lambda m, key=key: f"{key}: {m}")
        else:
            assert torch.equal(got["state"][key], value), key
    kind = ddp_worker.SCENARIOS[scenario][0]
    initial = search_setup.state_copy(search_setup.build_search(kind, seed=0, batchnorm=False))
    nas_keys = [k for k, v in reference["state"].items() if k.endswith(("alpha", "beta", "gamma"))]
    assert any(not torch.equal(initial[k], reference["state"][k]) for k in nas_keys), \
        "no architectural parameter moved: the comparison would be vacuous"
    assert got["exported_structure"] == reference["exported_structure"]

