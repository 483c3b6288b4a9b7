"""A PIT-SuperNet search on several processes with DistributedDataParallel.

Run on 2 processes (CPU with gloo, or one GPU per process with NCCL):

    torchrun --nproc_per_node 2 examples/ddp_search.py --steps 60

What keeps the processes one search:

- every rank seeds torch identically before building the model, so the Gumbel noise of the
  supernets is drawn identically on every rank (the data differ through the sampler only);
- DDP averages the gradients of the weights *and* of the architectural parameters, so α and
  the PIT masks stay identical; nothing toggles ``requires_grad`` after wrapping: the
  warm-up phase simply does not step the architecture optimizer (freezing a PIT mask kind,
  e.g. ``train_rf = False``, also works: frozen parameters receive zero gradients);
- every step changes the softmax temperature identically on every rank (it is a buffer);
- rank 0 writes checkpoints with ``plinio.checkpoint.save_checkpoint`` (the DDP wrapper is
  removed from the keys), ``--resume`` loads them on every rank;
- at the end every rank exports, and the script checks that all exported architectures are
  the same.
"""
import argparse
import os
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from plinio.checkpoint import load_checkpoint, save_checkpoint
from plinio.demo.data import NUM_CLASSES, load_digits_data
from plinio.methods import PITSuperNet
from plinio.methods.pit_supernet import PITSuperNetModule


def conv_choices(channels: int) -> PITSuperNetModule:
    """Candidate blocks for one position: 3×3, 5×5, depthwise-separable 3×3, or skip."""
    return PITSuperNetModule([
        nn.Sequential(nn.Conv2d(channels, channels, 3, padding="same"), nn.ReLU()),
        nn.Sequential(nn.Conv2d(channels, channels, 5, padding="same"), nn.ReLU()),
        nn.Sequential(nn.Conv2d(channels, channels, 3, padding="same", groups=channels),
                      nn.Conv2d(channels, channels, 1), nn.ReLU()),
        nn.Identity(),
    ], gumbel_softmax=True)


class DigitsSuperNet(nn.Module):
    """Small CNN for 16×16 digits with one searchable block per resolution."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding="same")
        self.block1 = conv_choices(width)
        self.pool = nn.MaxPool2d(2)
        self.block2 = conv_choices(width)
        self.head = nn.Linear(width * 8 * 8, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = self.pool(self.block1(x))
        x = self.block2(x)
        return self.head(torch.flatten(x, 1))


def temperature_at(step: int, steps: int, start: float = 1.0, end: float = 0.1) -> float:
    """Exponential annealing from ``start`` to ``end`` over the search."""
    return start * (end / start) ** (step / max(steps - 1, 1))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="search steps")
    parser.add_argument("--warmup-steps", type=int, default=20,
                        help="steps at the start that train the weights only")
    parser.add_argument("--batch-size", type=int, default=32, help="per-process batch size")
    parser.add_argument("--strength", type=float, default=1e-7,
                        help="weight of the MACs regularizer")
    parser.add_argument("--seed", type=int, default=0, help="same on every rank")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="file written by rank 0 every --checkpoint-every steps")
    parser.add_argument("--checkpoint-every", type=int, default=20)
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    parser.add_argument("--backend", default=None, help="gloo or nccl (default: by device)")
    return parser.parse_args(argv)


def summaries_agree(summary: Dict[str, Dict]) -> bool:
    """Whether every rank found the same architecture (compared as text)."""
    gathered: List[Optional[str]] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, repr(summary))
    return all(text == gathered[0] for text in gathered)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    use_cuda = torch.cuda.is_available()
    dist.init_process_group(backend=args.backend or ("nccl" if use_cuda else "gloo"))
    try:
        # the search's DDP wrapper holds the group: release it (by returning) before the
        # group is destroyed; a gloo group torn down afterwards can hang joining its threads
        agree = search_on_this_rank(args, use_cuda)
    finally:
        dist.destroy_process_group()
    if not agree:
        raise SystemExit("ranks disagree on the architecture")


def search_on_this_rank(args: argparse.Namespace, use_cuda: bool) -> bool:
    """Search, checkpoint and export on this rank; whether all ranks found the same
    architecture."""
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if use_cuda \
        else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)

    torch.manual_seed(args.seed)  # identical on every rank: same init and same Gumbel noise
    data = load_digits_data(seed=args.seed)
    search = PITSuperNet(DigitsSuperNet(), input_shape=data.input_shape,
                         regularizer="macs").to(device)
    model = DistributedDataParallel(search, device_ids=[device.index] if use_cuda else None)
    net_opt = torch.optim.Adam(search.net_parameters(), lr=1e-3)
    arch_opt = torch.optim.Adam(search.nas_parameters(), lr=1e-2)

    train = TensorDataset(data.train.images, data.train.labels)
    sampler = DistributedSampler(train, num_replicas=world, rank=rank, seed=args.seed,
                                 drop_last=True)
    loader = DataLoader(train, batch_size=args.batch_size, sampler=sampler, drop_last=True)

    step = 0
    if args.resume:
        if args.checkpoint is None:
            raise SystemExit("--resume needs --checkpoint")
        step = int(load_checkpoint(args.checkpoint, model,
                                   optimizers=[net_opt, arch_opt])["step"])
        if rank == 0:
            print(f"resumed at step {step}")

    epoch = 0
    model.train()
    while step < args.steps:
        sampler.set_epoch(epoch)
        for images, labels in loader:
            if step >= args.steps:
                break
            search.update_softmax_options(temperature=temperature_at(step, args.steps))
            images, labels = images.to(device), labels.to(device)
            task_loss = F.cross_entropy(model(images), labels)
            loss = task_loss + args.strength * search.get_regularization_loss()
            net_opt.zero_grad()
            arch_opt.zero_grad()
            loss.backward()
            net_opt.step()
            if step >= args.warmup_steps:  # search phase: the architecture moves too
                arch_opt.step()
            step += 1
            if rank == 0 and step % 10 == 0:
                print(f"step {step:4d}  task loss {task_loss.item():.4f}  "
                      f"MACs {search.get_macs().item():.0f}")
            if args.checkpoint is not None and step % args.checkpoint_every == 0:
                if rank == 0:
                    save_checkpoint(args.checkpoint, model, optimizers=[net_opt, arch_opt],
                                    extra={"step": step})
                dist.barrier()
        epoch += 1

    search.eval()
    exported = search.arch_export()
    summary = search.arch_summary()
    agree = summaries_agree(summary)
    if rank == 0:
        print("architecture:", summary)
        print("exported parameters:", sum(p.numel() for p in exported.parameters()))
        print("all ranks exported the same architecture:", agree)
    return agree


if __name__ == "__main__":
    main()
