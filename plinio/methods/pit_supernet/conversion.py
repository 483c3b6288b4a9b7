"""Supernet steps of the conversion, around the PIT conversion.

- ``find_supernets``: the supernets of a model, by qualified name (nested ones rejected).
- ``probe_supernets``: one batch-1 run of a private copy of the model that checks that the
  branches of every supernet agree on the output shape and measures the static branch
  costs (docs/behaviour.md §4.2).
- ``reset_combiners``: θ back to 1/n (no forward seen yet), no Gumbel noise.
- ``combiner_nodes``: the single graph node of each combiner.
"""
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

import torch
import torch.fx as fx
import torch.nn as nn

from .costs import BranchStaticCosts, measure_branch_static_costs
from .nn.combiner import PITSuperNetCombiner
from .nn.module import PITSuperNetModule


class BranchShapeError(ValueError):
    """Branches of one supernet produce outputs of different shapes."""


class _BranchTypeError(TypeError):
    """A branch of a supernet returned something else than one tensor."""


def find_supernets(model: nn.Module) -> Dict[str, PITSuperNetModule]:
    """Every ``PITSuperNetModule`` of ``model`` by qualified name, in definition order."""
    found: Dict[str, PITSuperNetModule] = {}
    for name, module in model.named_modules():
        if isinstance(module, PITSuperNetModule):
            for outer in found:
                if outer == "" or name.startswith(outer + "."):
                    raise NotImplementedError(
                        f"PITSuperNet: supernet '{name}' is nested inside supernet "
                        f"'{outer or '<model>'}'; nested supernets are not supported, flatten "
                        "them into one supernet with all the alternatives")
            found[name] = module
    return found


def _shape_check_hook(sn_name: str) -> Callable[[nn.Module, Tuple[Any, ...]], None]:
    def hook(_combiner: nn.Module, args: Tuple[Any, ...]) -> None:
        outputs = args[0]
        for idx, out in enumerate(outputs):
            if not isinstance(out, torch.Tensor):
                raise _BranchTypeError(
                    f"PITSuperNet: branch {idx} of supernet '{sn_name}' returned a "
                    f"{type(out).__name__}; every branch must return one tensor")
        reference = tuple(outputs[0].shape)
        for idx, out in enumerate(outputs[1:], start=1):
            if tuple(out.shape) != reference:
                raise BranchShapeError(
                    f"PITSuperNet: branch {idx} of supernet '{sn_name}' gives output shape "
                    f"{tuple(out.shape)} but branch 0 gives {reference}; every branch of a "
                    "supernet must produce the same output shape (fix the branch's stride, "
                    "padding or channel count)")
    return hook


def probe_supernets(model: nn.Module, supernets: Mapping[str, PITSuperNetModule],
                    run_model: Callable[[], None]) -> Dict[str, BranchStaticCosts]:
    """Check branch output shapes and measure static branch costs in one run.

    ``model`` must be a private copy (the run marks its combiners as having forwarded);
    ``run_model`` runs it on a batch-1 example. Shape mismatches raise ``ValueError`` naming
    the supernet, the branch and both shapes; any other failure of the run is reported as a
    ``ValueError`` saying the model cannot run on the given input.
    """
    handles = [sn.sn_combiner.register_forward_pre_hook(_shape_check_hook(name))
               for name, sn in supernets.items()]
    running: List[str] = []  # qualified names of the modules whose forward is in progress

    def leave(_module: nn.Module, _args: Any, _output: Any) -> None:
        running.pop()

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(
                lambda _m, _a, name=name: running.append(name)))
            handles.append(module.register_forward_hook(leave))
    branches = {name: list(sn.sn_input_layers) for name, sn in supernets.items()}
    try:
        return measure_branch_static_costs(model, branches, run_model)
    except (BranchShapeError, _BranchTypeError) as err:
        # raised by the hook deep inside the model's forward: the message says it all
        error: Exception = type(err)(str(err))
    except RuntimeError as err:
        where = f" in module '{running[-1]}'" if running else ""
        error = ValueError(
            f"PITSuperNet: the model ({type(model).__name__}) cannot run on the given input "
            f"shape/example{where}: {str(err).splitlines()[0] if str(err) else type(err).__name__}. "
            "Check input_shape (one sample, without the batch dimension) or pass input_example=")
    finally:
        for handle in handles:
            handle.remove()
    raise error from None


def reset_combiners(combiners: Sequence[PITSuperNetCombiner]) -> None:
    """Back to the state of a freshly built supernet: θ = 1/n until the next forward."""
    with torch.no_grad():
        for combiner in combiners:
            combiner.has_forwarded.fill_(False)
            combiner.gumbel_noise.zero_()


def combiner_nodes(gm: fx.GraphModule, combiner_targets: Sequence[str]) -> Dict[str, fx.Node]:
    """The single ``call_module`` node of each combiner (by qualified name)."""
    wanted = set(combiner_targets)
    nodes: Dict[str, fx.Node] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target in wanted:
            if node.target in nodes:
                raise NotImplementedError(
                    f"PITSuperNet: supernet combiner '{node.target}' is called more than once "
                    "in the traced graph; a supernet used several times is not supported")
            nodes[node.target] = node
    missing = wanted - set(nodes)
    if missing:
        raise ValueError(
            f"PITSuperNet: supernet combiner(s) {sorted(missing)} are never called by the "
            "model's forward; remove unused supernets from the model")
    return nodes
