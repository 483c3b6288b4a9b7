"""Generic epoch loops (train with an optional cost term, evaluate) with tqdm progress bars.

The same loop serves the three phases of the demo: warm-up (task loss, weight optimizer),
search (task loss + strength × normalized cost, weight and architecture optimizers) and
fine-tune of the exported network (task loss, all its parameters).
"""
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import DigitsData, Split, batches_per_epoch, iterate_batches


@dataclass(frozen=True)
class EpochResult:
    """Training loss and accuracy of one epoch, validation accuracy at its end, and the
    normalized cost (cost / unsearched cost) after the epoch when a cost term is used."""

    epoch: int
    loss: float
    accuracy: float
    val_accuracy: float
    cost: Optional[float]


def evaluate(model: nn.Module, split: Split, batch_size: int) -> Tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``split`` in eval mode.

    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    total_loss = 0.0
    correct = 0
    with torch.no_grad():
        for images, labels in iterate_batches(split, batch_size):
            logits = model(images)
            total_loss += float(F.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(dim=1) == labels).sum())
    model.train(was_training)
    return total_loss / len(split), correct / len(split)


def train(model: nn.Module, data: DigitsData, *, epochs: int,
          optimizers: Sequence[torch.optim.Optimizer], batch_size: int,
          generator: torch.Generator, desc: str, progress: bool,
          cost: Optional[Callable[[], torch.Tensor]] = None, strength: float = 0.0,
          on_epoch_start: Optional[Callable[[int], None]] = None,
          on_epoch_end: Optional[Callable[[EpochResult], None]] = None) -> List[EpochResult]:
    """Train ``model`` for ``epochs`` epochs on ``data.train``; validate after each epoch.

    The loss is ``cross_entropy + strength * cost()`` when ``cost`` is given (``cost``
    returns a differentiable 0-dim tensor). Every optimizer in ``optimizers`` is zeroed and
    stepped at each batch, so which parameters change is decided by the optimizers alone.
    """
    steps = batches_per_epoch(data.train, batch_size)
    history: List[EpochResult] = []
    bar = tqdm(total=epochs * steps, desc=desc, unit="step", disable=not progress,
               dynamic_ncols=True, leave=True)
    try:
        for epoch in range(epochs):
            if on_epoch_start is not None:
                on_epoch_start(epoch)
            model.train()
            seen = correct = 0
            loss_sum = 0.0
            cost_value: Optional[float] = None
            postfix = {"epoch": f"{epoch + 1}/{epochs}"}
            for images, labels in iterate_batches(data.train, batch_size, generator):
                for optimizer in optimizers:
                    optimizer.zero_grad(set_to_none=True)
                logits = model(images)
                loss = F.cross_entropy(logits, labels)
                if cost is not None:
                    cost_term = cost()
                    loss = loss + strength * cost_term
                    cost_value = float(cost_term.detach())
                loss.backward()
                for optimizer in optimizers:
                    optimizer.step()
                seen += int(labels.shape[0])
                loss_sum += float(loss.detach()) * int(labels.shape[0])
                correct += int((logits.detach().argmax(dim=1) == labels).sum())
                postfix = {"epoch": f"{epoch + 1}/{epochs}", "loss": f"{loss_sum / seen:.3f}",
                           "acc": f"{correct / seen:.3f}"}
                if cost_value is not None:
                    postfix["cost"] = f"{cost_value:.1%}"
                bar.set_postfix(postfix, refresh=False)
                bar.update(1)
            _, val_accuracy = evaluate(model, data.val, batch_size)
            if cost is not None:
                with torch.no_grad():
                    cost_value = float(cost())
            result = EpochResult(epoch=epoch, loss=loss_sum / max(seen, 1),
                                 accuracy=correct / max(seen, 1), val_accuracy=val_accuracy,
                                 cost=cost_value)
            history.append(result)
            bar.set_postfix({**postfix, "val_acc": f"{val_accuracy:.3f}"})
            if on_epoch_end is not None:
                on_epoch_end(result)
    finally:
        bar.close()
    return history
