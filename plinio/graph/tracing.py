"""torch.fx tracing with plinio's leaf rules, and shape propagation with an example input.

A model that cannot be traced or run is the user's error, not plinio's: the ValueErrors
raised here carry everything that helps (the module or node, the failing line of the user's
forward, the first line of the original message) and are raised ``from None``, so the user
reads one message instead of a chain of tracer and interpreter internals.
"""
import os
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import torch
import torch.fx as fx
import torch.nn as nn

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_LIBRARY_DIRS = (os.path.dirname(torch.__file__), os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
T = TypeVar("T")


def is_plinio_leaf(module: nn.Module) -> bool:
    """Modules kept as single graph nodes: plinio layers and combiners. A class opts in with
    the class attribute ``plinio_leaf = True`` (every PIT layer) or
    ``plinio_merges_inputs = True`` (the supernet combiner), so that this package never
    imports the methods that define them."""
    cls = type(module)
    return bool(getattr(cls, "plinio_leaf", False)) or bool(getattr(cls, "plinio_merges_inputs", False))


def is_torch_nn_module(module: nn.Module) -> bool:
    """A layer defined inside ``torch.nn`` (not a container)."""
    return type(module).__module__.startswith("torch.nn") and not isinstance(module, _CONTAINERS)


class PlinioTracer(fx.Tracer):
    """Leaves = torch.nn layers and plinio layers; user modules and containers are traced
    through. Remembers which module was being traced so that errors can name it."""

    def __init__(self) -> None:
        super().__init__()
        self.plinio_stack: List[str] = []
        self.failed_in: Optional[str] = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return is_torch_nn_module(m) or is_plinio_leaf(m)

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        self.plinio_stack.append(self.path_of_module(m) or type(m).__name__)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = self.plinio_stack[-1]
            raise
        finally:
            self.plinio_stack.pop()


def user_code_line(err: BaseException) -> Optional[str]:
    """'file:line: code' of the innermost frame of ``err``'s traceback outside torch and
    plinio (the line of the user's forward that failed), or None."""
    for frame in reversed(traceback.extract_tb(err.__traceback__)):
        filename = os.path.abspath(frame.filename)
        if not frame.filename.startswith("<") and not filename.startswith(_LIBRARY_DIRS):
            code = f": {frame.line.strip()}" if frame.line else ""
            return f"{frame.filename}:{frame.lineno}{code}"
    return None


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model``; data-dependent control flow becomes a clear ValueError."""
    tracer = PlinioTracer()
    try:
        graph = tracer.trace(model)
    except Exception as err:  # fx raises TraceError, TypeError, ... depending on the construct
        where = tracer.failed_in or type(model).__name__
        line = user_code_line(err)
        at = f" at {line}" if line else ""
        hint = ("data-dependent control flow (if/while on tensor values) is not supported: rewrite the "
                "forward without Python control flow on tensor values") if isinstance(err, fx.proxy.TraceError) \
            else "the forward must be symbolically traceable by torch.fx"
        raise ValueError(f"cannot trace the model with torch.fx inside module '{where}'{at} "
                         f"({type(err).__name__}: {err}); {hint}") from None
    name = model.__class__.__name__
    return fx.GraphModule(tracer.root, graph, name)


def make_example(input_shape: Optional[Sequence[int]], input_example: Any,
                 device: torch.device, dtype: torch.dtype) -> Tuple[torch.Tensor, ...]:
    """Validated example inputs (with batch dim) from ``input_shape`` or ``input_example``."""
    if input_example is not None:
        example = input_example if isinstance(input_example, (tuple, list)) else (input_example,)
        for i, t in enumerate(example):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"input_example[{i}] must be a tensor (with batch dimension), got "
                                f"{type(t).__name__}")
            if t.device != device:
                raise ValueError(f"input_example[{i}] is on device {t.device} but the model is on "
                                 f"{device}; move the example (or the model) to one device")
        return tuple(example)
    if input_shape is None:
        raise TypeError("give input_shape (a tuple of ints, without batch dimension) or input_example")
    if isinstance(input_shape, torch.Size):
        input_shape = tuple(input_shape)
    if not isinstance(input_shape, (tuple, list)) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in input_shape):
        raise TypeError(f"input_shape must be a tuple of ints (one input's shape without the batch "
                        f"dimension, e.g. (3, 32, 32)), got {input_shape!r}; for several inputs use "
                        f"input_example=(tensor1, tensor2)")
    if len(input_shape) == 0 or any(s <= 0 for s in input_shape):
        raise ValueError(f"input_shape must hold positive sizes, got {tuple(input_shape)}")
    return (torch.rand((1,) + tuple(input_shape), device=device, dtype=dtype),)


def run_with_batch_hint(run: Callable[[Tuple[torch.Tensor, ...]], T], example: Tuple[torch.Tensor, ...],
                        input_shape: Optional[Sequence[int]]) -> T:
    """``run(example)``. When it raises a ValueError for an ``input_shape`` that includes the
    batch dimension (the shape without its first entry runs), that is said instead."""
    try:
        return run(example)
    except ValueError:
        if input_shape is None or len(input_shape) < 2:
            raise
        shorter = tuple(input_shape)[1:]
        try:
            run(make_example(shorter, None, example[0].device, example[0].dtype))
        except Exception:  # any failure: the shorter shape does not explain it
            shorter = None
        if shorter is None:
            raise
    raise ValueError(f"input_shape must not include the batch dimension; got {tuple(input_shape)}, "
                     f"did you mean {shorter}?") from None


class _ShapeError(Exception):
    def __init__(self, where: str, err: Exception) -> None:
        super().__init__(where)
        self.where = where
        self.err = err


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph once, storing each tensor output's shape in ``node.meta['plinio_shape']``
    and naming the node that fails."""

    def run_node(self, n: fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception as err:
            where = f"module '{n.target}'" if n.op == "call_module" else f"node '{n.name}' ({n.target})"
            raise _ShapeError(where, err) from err
        if isinstance(result, torch.Tensor):
            n.meta["plinio_shape"] = tuple(result.shape)
        return result


def propagate_shapes(gm: fx.GraphModule, example: Tuple[torch.Tensor, ...]) -> None:
    """Run ``gm`` once in eval mode under no_grad, recording each node's output shape;
    restores the training flags afterwards."""
    flags = [(m, m.training) for m in gm.modules()]
    gm.eval()
    try:
        with torch.no_grad():
            _ShapeRecorder(gm).run(*example)
    except _ShapeError as failure:
        shapes = [tuple(t.shape) for t in example]
        err = failure.err
        message = str(err).splitlines()[0] if str(err) else ""
        raise ValueError(f"the model cannot run on an input of shape {shapes} (batch included): {failure.where} "
                         f"failed with {type(err).__name__}: {message}. Check input_shape / input_example.") \
            from None
    finally:
        for m, flag in flags:
            m.training = flag


def call_counts(gm: fx.GraphModule) -> Dict[str, int]:
    """How many ``call_module`` nodes call each submodule target."""
    calls: Dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    return calls


def node_shape(node: fx.Node) -> Optional[Tuple[int, ...]]:
    """Output shape of a tensor-valued node after shape propagation, else None."""
    return node.meta.get("plinio_shape")


def model_device_dtype(model: nn.Module) -> Tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first parameter or buffer (CPU/float32 if none)."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32
