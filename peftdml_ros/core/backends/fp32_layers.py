"""The layers of an exported graph that must stay fp32 in an fp16 or int8 TensorRT engine.

Found by inspecting the ONNX graph alone (no TensorRT needed), by two rules:

- `normality`: the GMM "distance from normal" subgraph, every node that feeds the
  `normality_score` output and no other output: the pooling of the fused features, the
  Mahalanobis terms with inverse variances up to 1e4 summed over the 64 embedding dimensions,
  and the log-sum-exp. In fp16 (largest value 65504, 11-bit mantissa) that sum overflows or
  loses its digits. `FeatureGmm.nll` is a method, not a module call, so the exporter puts these
  nodes in the parent's scope (`/net/Sub`, `/net/ReduceSum`, ...); the rule follows the graph,
  not names, and also takes any node of a `gmm/` scope should a later export have one.
- `pillars`: every node of a point encoder's `pillars/` scope (`/net/lidar/pillars/...`,
  `/net/radar/pillars/...`, named by the module path of `PillarScatter`) outside its
  `point_mlp/`: cell indices from coordinates (fp16 moves a 50 m coordinate by up to 3 cm,
  enough to change a point's pillar), the ScatterElements sums of point features and point
  counts (thousands of addends per pillar), the mean and log(1 + count). The point MLP itself is
  LayerNorm-bounded and runs well in fp16.

Only nodes whose outputs are all floating point are pinned (index, shape and boolean tensors
have no precision to keep), plus the float initializers read only by pinned nodes (in TensorRT
they become constant layers, whose weights must not be rounded to fp16 either).

TensorRT's ONNX parser names a layer after its ONNX node and its output tensors after the ONNX
tensors, so the builder matches layers by either (`tensorrt_backend.pin_fp32_layers`).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

NORMALITY_OUTPUT = "normality_score"
RULE_NORMALITY = "normality"
RULE_PILLARS = "pillars"

_PILLAR_SCOPE = re.compile(r"(^|/)pillars/")
_POINT_MLP_SCOPE = re.compile(r"(^|/)pillars/point_mlp(/|$)")
_GMM_SCOPE = re.compile(r"(^|/)gmm/")
# onnx.TensorProto element types FLOAT, FLOAT16, DOUBLE, BFLOAT16.
_FLOAT_TYPES = frozenset({1, 10, 11, 16})


@dataclass(frozen=True)
class PinnedLayers:
    """nodes: ONNX node name -> rule; tensors: ONNX tensor name -> rule (outputs of the pinned
    nodes and the float initializers only they read)."""

    nodes: dict[str, str]
    tensors: dict[str, str]

    def count_by_rule(self) -> dict[str, int]:
        return dict(Counter(self.nodes.values()))

    def rule_of(self, layer_name: str, output_names: list[str]) -> str | None:
        """The rule pinning a TensorRT layer with this name and these output tensors, or None."""
        if layer_name in self.nodes:
            return self.nodes[layer_name]
        for name in output_names:
            if name in self.tensors:
                return self.tensors[name]
        return None


def _node_key(node: Any) -> str:
    # Unnamed nodes are named after their first output by TensorRT's parser as well.
    return str(node.name) if node.name else str(node.output[0])


def _tensor_types(model: Any) -> dict[str, int]:
    """Element type of every tensor of the graph (after ONNX shape inference)."""
    import onnx

    graph = onnx.shape_inference.infer_shapes(model).graph
    types: dict[str, int] = {}
    for value in [*graph.input, *graph.output, *graph.value_info]:
        types[value.name] = int(value.type.tensor_type.elem_type)
    for tensor in graph.initializer:
        types[tensor.name] = int(tensor.data_type)
    for node in graph.node:  # Constant nodes carry their type in an attribute
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    types[node.output[0]] = int(attribute.t.data_type)
    return types


def _ancestors(graph: Any, outputs: set[str]) -> set[str]:
    """Node keys of every node on a path into the tensors `outputs`."""
    producer = {tensor: node for node in graph.node for tensor in node.output}
    seen: set[str] = set()
    stack = [producer[name] for name in outputs if name in producer]
    while stack:
        node = stack.pop()
        key = _node_key(node)
        if key in seen:
            continue
        seen.add(key)
        stack.extend(producer[name] for name in node.input if name in producer)
    return seen


def select_fp32_layers(model: Any) -> PinnedLayers:
    """The nodes of an exported model_io graph (an onnx.ModelProto) to keep in fp32, by rule
    (see the module docstring)."""
    graph = model.graph
    types = _tensor_types(model)
    output_names = {value.name for value in graph.output}
    normality = set()
    if NORMALITY_OUTPUT in output_names:
        normality = _ancestors(graph, {NORMALITY_OUTPUT}) - _ancestors(
            graph, output_names - {NORMALITY_OUTPUT}
        )
    nodes: dict[str, str] = {}
    for node in graph.node:
        key = _node_key(node)
        if not node.output or not all(types.get(t) in _FLOAT_TYPES for t in node.output if t):
            continue
        if key in normality or _GMM_SCOPE.search(key):
            nodes[key] = RULE_NORMALITY
        elif _PILLAR_SCOPE.search(key) and not _POINT_MLP_SCOPE.search(key):
            nodes[key] = RULE_PILLARS
    tensors = {
        t: nodes[_node_key(n)] for n in graph.node if _node_key(n) in nodes for t in n.output
    }
    tensors.update(_private_initializers(graph, nodes, types))
    return PinnedLayers(nodes=nodes, tensors=tensors)


def _private_initializers(
    graph: Any, nodes: dict[str, str], types: dict[str, int]
) -> dict[str, str]:
    """Float initializers whose every reader is a pinned node -> that node's rule."""
    readers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(_node_key(node))
    out: dict[str, str] = {}
    for tensor in graph.initializer:
        keys = readers.get(tensor.name, [])
        if keys and types.get(tensor.name) in _FLOAT_TYPES and all(k in nodes for k in keys):
            out[tensor.name] = nodes[keys[0]]
    return out
