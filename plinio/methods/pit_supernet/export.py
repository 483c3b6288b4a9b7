"""Supernet step of the export: each combiner node is replaced by the output node of its
``best_layer_index()`` branch and the other branches disappear (docs/behaviour.md §6); the PIT
layers are exported afterwards by ``plinio.methods.pit.export``."""
from typing import List, Mapping, Sequence, Set

import torch.fx as fx

from .conversion import combiner_nodes


def _erase_newly_dead(gm: fx.GraphModule, roots: Sequence[fx.Node]) -> None:
    """Erase ``roots`` and, transitively, the inputs that had no other user.

    Only what the removal made dead goes: nodes that were unused before are kept, as the
    conversion keeps them.
    """
    pending = list(roots)
    erased: Set[fx.Node] = set()
    while pending:
        node = pending.pop()
        if node in erased or node.users or node.op in ("placeholder", "output"):
            continue
        inputs = list(node.all_input_nodes)
        gm.graph.erase_node(node)
        erased.add(node)
        pending.extend(inputs)


def keep_best_branches(gm: fx.GraphModule, best: Mapping[str, int]) -> List[str]:
    """Replace each combiner node by its chosen branch output and drop the other branches.

    ``best`` maps combiner qualified names to branch indices. Returns the qualified names of
    the submodules that were removed because no node uses them any more.
    """
    nodes = combiner_nodes(gm, list(best))
    dropped: List[fx.Node] = []
    for target, node in nodes.items():
        outputs = node.args[0] if node.args else None
        if not isinstance(outputs, (list, tuple)) or len(node.args) != 1 or node.kwargs:
            raise NotImplementedError(
                f"PITSuperNet: combiner '{target}' is not called with one list of branch "
                "outputs; its supernet forward was changed, which export cannot follow")
        index = best[target]
        if not 0 <= index < len(outputs):
            raise ValueError(
                f"PITSuperNet: branch index {index} out of range for combiner '{target}' "
                f"with {len(outputs)} branches")
        chosen = outputs[index]
        node.replace_all_uses_with(chosen)
        gm.graph.erase_node(node)
        dropped.extend(out for i, out in enumerate(outputs)
                       if i != index and isinstance(out, fx.Node))
    _erase_newly_dead(gm, dropped)
    before = {name for name, _ in gm.named_modules()}
    gm.delete_all_unused_submodules()
    gm.recompile()
    after = {name for name, _ in gm.named_modules()}
    return sorted(before - after)
