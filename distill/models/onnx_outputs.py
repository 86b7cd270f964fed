"""Which output of an ONNX model is the embedding, read from the model's graph.

Models found in the wild often return more than the embedding: a classifier's logits beside it (in either
order), auxiliary scores, a feature map. Storing the logits as embeddings gives a store that looks fine and
teaches nothing, so fsd never picks an output by position. When the user names none (``?output=``):

1. the candidates are the outputs of rank 2 (batch, D);
2. a candidate computed *from another output* is downstream of it — a head (logits = W·embedding + b, a
   cosine head over the normalised embedding, a softmax over the logits) — and is dropped: the embedding is
   the tensor the others are computed from, never one computed from it;
3. among what is left, a tensor that is the result of a linear layer (Gemm or MatMul with a constant weight,
   through element-wise activations) is dropped only if that still leaves exactly one;
4. exactly one left: that is the embedding; otherwise the model is refused with the list of its outputs and
   ``?output=NAME`` to choose.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from featstore.errors import InvalidInput

# element-wise or shape-only ops that do not change what a tensor is (logits through Softmax are logits)
_TRANSPARENT = frozenset(
    {"Identity", "Softmax", "LogSoftmax", "Sigmoid", "Add", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}
)
_LINEAR = frozenset({"Gemm", "MatMul"})


def describe_outputs(outputs: Sequence[Any]) -> str:
    """``name (d0, d1), …`` of onnxruntime's output descriptions, for messages."""
    return ", ".join(f"{o.name} {_shape_text(o.shape or ())}" for o in outputs)


def _shape_text(shape: Sequence[Any]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def resolve_output(spec: str, outputs: Sequence[Any], requested: str) -> int:
    """The index of the output ``requested`` names: an output's name, else its index."""
    names = [o.name for o in outputs]
    if requested in names:
        return names.index(requested)
    if requested.isascii() and requested.isdigit() and int(requested) < len(outputs):
        return int(requested)
    raise InvalidInput(
        f"teacher {spec!r}: output={requested!r} is not one of the model's outputs: {describe_outputs(outputs)} "
        "(give a name or an index from 0)"
    )


def choose_embedding(spec: str, path: Path, outputs: Sequence[Any]) -> int:
    """The index of the embedding among a model's several outputs (rules in the module docstring)."""
    import onnx

    candidates = [i for i, o in enumerate(outputs) if len(o.shape or ()) == 2]
    if len(candidates) > 1 or (candidates and len(outputs) > 1):
        graph = onnx.load(str(path), load_external_data=False).graph
        producers = {name: node for node in graph.node for name in node.output}
        constants = {t.name for t in graph.initializer} | {
            name for node in graph.node if node.op_type == "Constant" for name in node.output
        }
        names = [o.name for o in outputs]
        upstream = {name: _ancestors(name, producers) for name in names}
        heads = {i for i in candidates if any(other in upstream[names[i]] for other in names if other != names[i])}
        left = [i for i in candidates if i not in heads]
        if len(left) > 1:
            unprojected = [i for i in left if not _is_linear(names[i], producers, constants)]
            left = unprojected if len(unprojected) == 1 else left
        candidates = left
    if len(candidates) == 1:
        return candidates[0]
    raise InvalidInput(
        f"teacher {spec!r}: the model has {len(outputs)} outputs and none is clearly the embedding (a (batch, D) "
        f"output that no other output is computed from): {describe_outputs(outputs)}; choose one with ?output=NAME"
    )


def _ancestors(tensor: str, producers: dict[str, Any]) -> set[str]:
    """Every tensor ``tensor`` is computed from (not itself), walking the graph back to its inputs."""
    seen: set[str] = set()
    stack = list(producers[tensor].input) if tensor in producers else []
    while stack:
        name = stack.pop()
        if name and name not in seen:
            seen.add(name)
            node = producers.get(name)
            if node is not None:
                stack.extend(node.input)
    return seen


def _is_linear(tensor: str, producers: dict[str, Any], constants: set[str]) -> bool:
    """Whether ``tensor`` is a linear layer's result (a Gemm/MatMul with a constant operand).

    Element-wise activations and reshapes in between are looked through.
    """
    node = producers.get(tensor)
    while node is not None and node.op_type in _TRANSPARENT and node.input:
        node = producers.get(node.input[0])
    return node is not None and node.op_type in _LINEAR and any(name in constants for name in node.input[1:])
