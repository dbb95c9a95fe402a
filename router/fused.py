"""One ONNX graph for a whole scoring pass, stitched at load from an artifact's stages.

An artifact keeps its stages as separate files (embedder, head, acceptor,
clusters) so that each can be checked, reported and replaced on its own. Serving
them as four sessions costs four `run` calls and a numpy detour for the acceptor
features on every request; stitched into one graph they cost one call. The
acceptor features are computed here in ONNX ops, the same quantities as
`router.acceptor.acceptor_features`, and the trainer calibrates through this
graph too, so the scores that set the threshold are the scores served.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper

#: Output names of a stitched graph.
OUTPUTS = ("probabilities", "similarity", "accept_score", "cluster")
_IR_VERSION = 8


def _opsets(models: list[onnx.ModelProto]) -> list[onnx.OperatorSetIdProto]:
    """The highest version of each domain: the stages use only ops stable across them."""
    best: dict[str, int] = {}
    for model in models:
        for op in model.opset_import:
            best[op.domain] = max(best.get(op.domain, 0), op.version)
    return [helper.make_opsetid(domain, version) for domain, version in sorted(best.items())]


def _stage(model: onnx.ModelProto, prefix: str) -> onnx.GraphProto:
    return compose.add_prefix(model, prefix).graph


def _io(name: str, elem: int, shape: list[int | str | None]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def stitch(
    head: onnx.ModelProto,
    n_classes: int,
    acceptor_kind: str,
    *,
    text_model: onnx.ModelProto | None = None,
    acceptor: onnx.ModelProto | None = None,
    acceptor_output: str = "probabilities",
    clusters: onnx.ModelProto | None = None,
) -> onnx.ModelProto:
    """Graph from "text" [N, 1] (with `text_model`) or "features" [N, D] to `OUTPUTS`.

    `head` gives "probabilities" and, when the artifact has an OOD check,
    "similarity"; without one the similarity is 1. `acceptor_kind` is
    "learned" (then `acceptor` maps "acceptor_features" [N, 4] to
    `acceptor_output` [N, 2]), "max_prob" or "margin". "cluster" is -1 without
    `clusters`.
    """
    models = [head] + [m for m in (text_model, acceptor, clusters) if m is not None]
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def add(graph: onnx.GraphProto) -> None:
        nodes.extend(graph.node)
        inits.extend(graph.initializer)

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    if text_model is not None:
        graph_in = _io("text", TensorProto.STRING, [None, 1])
        text = _stage(text_model, "t_")
        add(text)
        node("Identity", ["text"], text.input[0].name)
        node("Identity", [text.output[0].name], "features")
    else:
        dim = head.graph.input[0].type.tensor_type.shape.dim[1].dim_value
        graph_in = _io("features", TensorProto.FLOAT, [None, dim or None])

    h = _stage(head, "h_")
    add(h)
    node("Identity", ["features"], h.input[0].name)
    node("Identity", ["h_probabilities"], "probabilities")
    head_outputs = {o.name for o in h.output}
    axis1 = const("f_axis1", np.array([1], np.int64))
    # p1, p2: the two largest probabilities (a zero column makes K = 1 work as in numpy)
    node("Slice", ["probabilities", const("f_0", np.array([0], np.int64)), axis1, axis1], "f_col0")
    zeros_col = node("Mul", ["f_col0", const("f_zero", np.array(0.0, np.float32))], "f_zeros")
    padded = node("Concat", ["probabilities", zeros_col], "f_padded", axis=1)
    k2 = const("f_k2", np.array([2], np.int64))
    nodes.append(helper.make_node("TopK", [padded, k2], ["f_top2", "f_top2_idx"], axis=1))
    p1 = node("Slice", ["f_top2", "f_0", axis1, axis1], "f_p1")
    p2 = node("Slice", ["f_top2", axis1, const("f_2", np.array([2], np.int64)), axis1], "f_p2")
    margin = node("Sub", [p1, p2], "f_margin")
    lo = const("f_lo", np.array(1e-12, np.float32))
    hi = const("f_hi", np.array(1.0, np.float32))
    clipped = node("Clip", ["probabilities", lo, hi], "f_clipped")
    plogp = node("Mul", [clipped, node("Log", [clipped], "f_log")], "f_plogp")
    neg_sum = node("ReduceSum", [plogp, axis1], "f_plogp_sum", keepdims=1)
    scale = const("f_scale", np.array(-1.0 / np.log(max(n_classes, 2)), np.float32))
    entropy = node("Mul", [neg_sum, scale], "f_entropy")
    if "h_similarity" in head_outputs:
        node("Identity", ["h_similarity"], "similarity")
    else:
        ones = node("Add", [zeros_col, const("f_one", np.array(1.0, np.float32))], "f_ones")
        node("Squeeze", [ones, axis1], "similarity")
    sim_col = node("Unsqueeze", ["similarity", axis1], "f_sim_col")
    feats = node("Concat", [p1, margin, entropy, sim_col], "acceptor_features", axis=1)

    if acceptor_kind == "learned":
        if acceptor is None:
            raise ValueError("a learned acceptor needs its model")
        a = _stage(acceptor, "a_")
        add(a)
        node("Identity", [feats], a.input[0].name)
        last = const("f_last", np.array([-1], np.int64))
        big = const("f_big", np.array([2**31], np.int64))
        node("Slice", [f"a_{acceptor_output}", last, big, axis1], "f_accept_col")
    elif acceptor_kind == "max_prob":
        node("Identity", [p1], "f_accept_col")
    elif acceptor_kind == "margin":
        node("Identity", [margin], "f_accept_col")
    else:
        raise ValueError(f"unknown acceptor kind {acceptor_kind!r}")
    node("Squeeze", ["f_accept_col", axis1], "accept_score")

    if clusters is not None:
        c = _stage(clusters, "c_")
        add(c)
        node("Identity", ["features"], c.input[0].name)
        node("Reshape", [c.output[0].name, const("f_flat", np.array([-1], np.int64))], "cluster")
    else:
        minus_one = node("Cast", [node("Squeeze", [zeros_col, axis1], "f_z1")], "f_zi", to=7)
        node("Sub", [minus_one, const("f_one_i", np.array(1, np.int64))], "cluster")

    outputs = [
        _io("probabilities", TensorProto.FLOAT, [None, n_classes]),
        _io("similarity", TensorProto.FLOAT, [None]),
        _io("accept_score", TensorProto.FLOAT, [None]),
        _io("cluster", TensorProto.INT64, [None]),
    ]
    graph = helper.make_graph(nodes, "tracer_scoring", [graph_in], outputs, inits)
    model = helper.make_model(graph, opset_imports=_opsets(models))
    model.ir_version = _IR_VERSION
    return model
