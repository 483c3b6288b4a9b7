"""A search interrupted after 3 of 6 steps and resumed (fresh object, fresh process) gives
exactly the losses and parameters of the uninterrupted run (CPU, Gumbel sampling and a
temperature / switch schedule included)."""
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch

import search_setup
from plinio.checkpoint import load_checkpoint, save_checkpoint
from plinio.methods.pit.nn import PITConv1d
from plinio.methods.pit_supernet.nn import PITSuperNetCombiner

REPO_ROOT = Path(__file__).resolve().parents[2]
STEPS, CUT = 6, 3


Uninterrupted = Tuple[Path, List[float], Dict[str, torch.Tensor]]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Uninterrupted]:
    """For each kind: the checkpoint written at the cut, the 6 losses and the final state
    of the run that was not interrupted (computed once for the module)."""
    runs = {}
    for kind in search_setup.KINDS:
        checkpoint = tmp_path_factory.mktemp(kind) / "search.ckpt"
        torch.manual_seed(7)
        search = search_setup.build_search(kind, seed=0)
        optimizers = search_setup.make_optimizers(search)
        losses = search_setup.run(search, optimizers, kind, range(CUT))
        save_checkpoint(checkpoint, search, optimizers=optimizers, extra={"step": CUT})
        losses += search_setup.run(search, optimizers, kind, range(CUT, STEPS))
        runs[kind] = (checkpoint, losses, search_setup.state_copy(search))
    return runs


def _assert_same_state(got, expected) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), f"{key} differs after resume"


@pytest.mark.parametrize("kind", search_setup.KINDS)
def test_resume_in_a_fresh_object_is_bit_identical(uninterrupted, kind: str) -> None:
    path, losses, final = uninterrupted[kind]

    torch.manual_seed(999)  # the RNG must come from the checkpoint, not from this seed
    search = search_setup.build_search(kind, seed=1)
    optimizers = search_setup.make_optimizers(search)
    assert not torch.equal(next(search.parameters()).detach(),
                           final[next(iter(dict(search.named_parameters())))])
    assert load_checkpoint(path, search, optimizers=optimizers) == {"step": CUT}
    _assert_switches_at_cut(search, kind)
    resumed = search_setup.run(search, optimizers, kind, range(CUT, STEPS))
    assert resumed == losses[CUT:]
    _assert_same_state(search_setup.state_copy(search), final)


def _assert_switches_at_cut(search: torch.nn.Module, kind: str) -> None:
    """The switches the schedule set before the cut come back from the checkpoint, on every
    layer and on the wrapper (they are buffers, not Python attributes)."""
    if kind == "supernet":
        combiners = [m for m in search.modules() if isinstance(m, PITSuperNetCombiner)]
        assert combiners
        assert all(c.hard_softmax and not c.train_selection for c in combiners)
        assert all(c.softmax_temperature == 0.5 for c in combiners)
        assert not search.train_selection
    else:
        convs = [m for m in search.modules() if isinstance(m, PITConv1d)]
        assert convs and not any(c.train_rf or c.train_dilation for c in convs)
        assert all(c.train_features for c in convs if c.out_features_masker.alpha.requires_grad)
        assert (search.train_features, search.train_rf, search.train_dilation) == \
            (True, False, False)


def test_resume_in_a_fresh_process_is_bit_identical(uninterrupted, tmp_path: Path) -> None:
    kind = "supernet"
    path, losses, final = uninterrupted[kind]
    output = tmp_path / "resumed.pt"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    # same intra-op thread count as the uninterrupted run: CPU reductions split by thread
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    worker = Path(__file__).resolve().parent / "resume_worker.py"
    proc = subprocess.run(
        [sys.executable, str(worker), kind, str(path), str(output), str(CUT), str(STEPS)],
        env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = torch.load(output, weights_only=True)
    assert result["losses"] == losses[CUT:]
    _assert_same_state(result["state"], final)
