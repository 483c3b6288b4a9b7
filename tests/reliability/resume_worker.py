"""Resume a search from a checkpoint in a fresh process (run by test_resume.py).

Usage: python resume_worker.py KIND CHECKPOINT OUTPUT START STOP
Writes the losses of steps START..STOP-1 and the final state_dict to OUTPUT.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import search_setup  # noqa: E402  (needs the folder on sys.path first)
from plinio.checkpoint import load_checkpoint  # noqa: E402


def main() -> None:
    kind, checkpoint, output, start, stop = sys.argv[1:6]
    search = search_setup.build_search(kind, seed=12345)  # other weights than the saved ones
    optimizers = search_setup.make_optimizers(search)
    extra = load_checkpoint(checkpoint, search, optimizers=optimizers)
    if extra.get("step") != int(start):
        raise SystemExit(f"checkpoint is at step {extra.get('step')}, expected {start}")
    losses = search_setup.run(search, optimizers, kind, range(int(start), int(stop)))
    torch.save({"losses": losses, "state": search_setup.state_copy(search)}, output)


if __name__ == "__main__":
    main()
