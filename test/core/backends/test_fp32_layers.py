"""The fp32-pinned layer selection on the real exported graph of the tiny model (ONNX only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from peftdml_ros.core.backends.fp32_layers import (
    NORMALITY_OUTPUT,
    RULE_NORMALITY,
    RULE_PILLARS,
    PinnedLayers,
    select_fp32_layers,
)
from peftdml_ros.core.model import build_model, export_onnx, tiny_config
from peftdml_ros.core.model.detector_net import example_inputs
from peftdml_ros.core.model_io import INPUT_NAMES, OUTPUT_NAMES


@pytest.fixture(scope="module")
def graph(tiny_onnx: Path) -> onnx.ModelProto:
    return onnx.load(str(tiny_onnx))


@pytest.fixture(scope="module")
def pinned(graph: onnx.ModelProto) -> PinnedLayers:
    return select_fp32_layers(graph)


def _nodes(graph: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {node.name: node for node in graph.graph.node}


def _consumers(graph: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def test_both_rules_select_layers(pinned: PinnedLayers) -> None:
    counts = pinned.count_by_rule()
    assert counts[RULE_NORMALITY] >= 10 and counts[RULE_PILLARS] >= 50, counts


def test_the_normality_subgraph_is_pinned_and_nothing_of_the_detection_head(
    graph: onnx.ModelProto, pinned: PinnedLayers
) -> None:
    nodes = _nodes(graph)
    normality = {name for name, rule in pinned.nodes.items() if rule == RULE_NORMALITY}
    producer = next(n for n in graph.graph.node if NORMALITY_OUTPUT in n.output)
    assert producer.name in normality  # the node writing the output itself
    ops = {nodes[name].op_type for name in normality if name in nodes}
    # pooling of the fused features, Mahalanobis terms, their sum over d, log-sum-exp over K
    assert {"ReduceMean", "Sub", "Exp", "ReduceSum", "ReduceLogSumExp"} <= ops, ops
    pool = next(nodes[n] for n in normality if n in nodes and nodes[n].op_type == "ReduceMean")
    assert pool.input[0].startswith("/net/fusion/")  # the mean over cells of the fused BEV
    # Exclusive: nothing pinned by this rule reaches any other output.
    consumers = _consumers(graph)
    others = set(OUTPUT_NAMES) - {NORMALITY_OUTPUT}
    frontier = [t for name in normality if name in nodes for t in nodes[name].output]
    seen: set[str] = set()
    while frontier:
        tensor = frontier.pop()
        assert tensor not in others, f"{tensor} is a detection output fed by the GMM rule"
        for node in consumers.get(tensor, []):
            if node.name not in seen:
                seen.add(node.name)
                frontier.extend(node.output)
    assert not any(name.startswith("/net/head/") for name in normality)
    # The GMM parameters (constant-folded into initializers) stay fp32 as well.
    initializers = {t.name for t in graph.graph.initializer}
    assert any(
        name in initializers and rule == RULE_NORMALITY for name, rule in pinned.tensors.items()
    )
    assert pinned.tensors[NORMALITY_OUTPUT] == RULE_NORMALITY


def test_the_pillar_sums_are_pinned_but_not_the_point_mlp(
    graph: onnx.ModelProto, pinned: PinnedLayers
) -> None:
    nodes = _nodes(graph)
    for encoder in ("lidar", "radar"):
        scope = f"/net/{encoder}/pillars/"
        scatters = [
            n.name
            for n in graph.graph.node
            if n.name.startswith(scope) and n.op_type == "ScatterElements"
        ]
        assert len(scatters) == 2, scatters  # feature sums and point counts
        for op in ("ScatterElements", "Floor", "Div", "Log"):
            chosen = [n for n in pinned.nodes if n.startswith(scope) and nodes[n].op_type == op]
            assert chosen, f"no {op} of {scope} pinned"
        assert all(pinned.nodes[n] == RULE_PILLARS for n in scatters)
    assert not any("point_mlp" in name for name in pinned.nodes)
    mlp = [n.name for n in graph.graph.node if "/pillars/point_mlp/" in n.name]
    assert mlp  # the MLP exists in the graph: it is left to fp16 on purpose
    elsewhere = ("/net/head/", "/net/lidar/backbone/")
    assert not any(name.startswith(elsewhere) for name in pinned.nodes)


def test_only_float_layers_are_pinned(graph: onnx.ModelProto, pinned: PinnedLayers) -> None:
    inferred = onnx.shape_inference.infer_shapes(graph).graph
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.value_info}
    types.update({v.name: v.type.tensor_type.elem_type for v in inferred.output})
    nodes = _nodes(graph)
    for name in pinned.nodes:
        for tensor in nodes[name].output:
            if tensor in types:
                assert types[tensor] == onnx.TensorProto.FLOAT, (name, tensor)
    # The cell index (a Cast to int64) and the validity masks (And) are left alone.
    scope = "/net/lidar/pillars/"
    left = [n for n in graph.graph.node if n.name.startswith(scope) and n.name not in pinned.nodes]
    assert {"And", "Cast"} <= {n.op_type for n in left}


def test_layers_are_matched_by_node_name_or_output_tensor(pinned: PinnedLayers) -> None:
    name, rule = next(iter(pinned.nodes.items()))
    assert pinned.rule_of(name, []) == rule
    assert pinned.rule_of("some_aux_layer", [NORMALITY_OUTPUT]) == RULE_NORMALITY
    assert pinned.rule_of("/net/head/out/Conv", ["/net/head/out/Conv_output_0"]) is None


def test_the_normality_score_exceeds_fp16_where_the_gmm_is_sharp(tmp_path: Path) -> None:
    """Why the rule exists, on the exported graph: with variances at the GMM's floor (1e-4,
    inverse variance 1e4) and a frame 1.0 from the means in each of the d dimensions (16 in the
    tiny config, 64 by default), ONNX Runtime (fp32) scores it about 5e3 * d, beyond fp16's
    largest value; the Mahalanobis sum over the dimensions overflows to inf in fp16."""
    torch.manual_seed(5)
    config = tiny_config()
    model = build_model(config).eval()
    inputs = example_inputs(config, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pooled = model.forward_with_embeddings(inputs)[1].pooled  # [1, d]
        gmm = model.gmm
        gmm.means.copy_(pooled.repeat(gmm.components, 1) + 1.0)
        gmm.log_vars.fill_(float(np.log(1e-4)))
        gmm.fitted.fill_(1.0)
    path = export_onnx(model, tmp_path / "gmm.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    score = session.run([NORMALITY_OUTPUT], {n: inputs[n].numpy() for n in INPUT_NAMES})[0]
    fp16_max = float(np.finfo(np.float16).max)
    assert np.isfinite(score).all() and float(score[0]) > fp16_max
    terms = ((pooled - gmm.means) ** 2 * torch.exp(-gmm.log_vars)).numpy()  # [K, d]
    assert np.isfinite(terms.sum(axis=1, dtype=np.float32)).all()
    with np.errstate(over="ignore"):
        assert np.isinf(terms.astype(np.float16).sum(axis=1, dtype=np.float16)).all()
    assert select_fp32_layers(onnx.load(str(path))).count_by_rule()[RULE_NORMALITY] >= 10
