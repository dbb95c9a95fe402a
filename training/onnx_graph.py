"""Build the classifier "head" graph: features -> probabilities (+ OOD similarity).

One ONNX session per stage keeps latency low: the head fuses the projection
(linear weights, or a TruncatedSVD plus an skl2onnx sub-model) and the
centroid similarity of the OOD check into one matrix product. For wide sparse
features (TF-IDF) the product gathers only the rows of the non-zero features
(NonZero / Gather / ScatterND) instead of a dense [D, M] MatMul.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper

OPSET = {"": 17, "ai.onnx.ml": 3}
IR_VERSION = 8
SPARSE_MIN_DIM = 4096


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _sparse_matmul(x: str, w: str, out: str, m: int) -> tuple[list[onnx.NodeProto], list]:
    """out[N, m] = x[N, D] @ w[D, m], touching only the non-zero entries of x.

    Also gives f"{out}_rownorm" [N, 1], the rows' L2 norms, for the OOD cosine.
    """
    nodes = [
        helper.make_node("NonZero", [x], ["sm_nz"]),
        helper.make_node("Transpose", ["sm_nz"], ["sm_nzT"], perm=[1, 0]),
        helper.make_node("GatherND", [x, "sm_nzT"], ["sm_vals"]),
        helper.make_node("Gather", ["sm_nz", "sm_i1"], ["sm_cols"], axis=0),
        helper.make_node("Gather", ["sm_nz", "sm_i0"], ["sm_rows"], axis=0),
        helper.make_node("Gather", [w, "sm_cols"], ["sm_wr"], axis=0),
        helper.make_node("Unsqueeze", ["sm_vals", "sm_a1"], ["sm_vals2"]),
        helper.make_node("Mul", ["sm_wr", "sm_vals2"], ["sm_contrib"]),
        # one more column carries the squared values: their row sums give the rows' norms
        helper.make_node("Mul", ["sm_vals2", "sm_vals2"], ["sm_sq"]),
        helper.make_node("Concat", ["sm_contrib", "sm_sq"], ["sm_contrib_sq"], axis=1),
        helper.make_node("Shape", [x], ["sm_xs"]),
        helper.make_node("Slice", ["sm_xs", "sm_a0", "sm_a1"], ["sm_n"]),
        helper.make_node("Concat", ["sm_n", "sm_m1"], ["sm_shape"], axis=0),
        helper.make_node(
            "ConstantOfShape",
            ["sm_shape"],
            ["sm_zeros"],
            value=numpy_helper.from_array(np.zeros(1, np.float32)),
        ),
        helper.make_node("Unsqueeze", ["sm_rows", "sm_a1"], ["sm_rows2"]),
        helper.make_node(
            "ScatterND", ["sm_zeros", "sm_rows2", "sm_contrib_sq"], ["sm_sums"], reduction="add"
        ),
        helper.make_node("Slice", ["sm_sums", "sm_a0", "sm_m", "sm_a1"], [out]),
        helper.make_node("Slice", ["sm_sums", "sm_m", "sm_m1", "sm_a1"], ["sm_sumsq"]),
        helper.make_node("Sqrt", ["sm_sumsq"], [f"{out}_rownorm"]),
    ]
    inits = [
        _const("sm_i0", np.array(0, np.int64)),
        _const("sm_i1", np.array(1, np.int64)),
        _const("sm_a0", np.array([0], np.int64)),
        _const("sm_a1", np.array([1], np.int64)),
        _const("sm_m", np.array([m], np.int64)),
        _const("sm_m1", np.array([m + 1], np.int64)),
    ]
    return nodes, inits


def build_head(
    dim: int,
    n_classes: int,
    projection: np.ndarray,
    bias: np.ndarray | None = None,
    temperature: float = 1.0,
    sub_model: onnx.ModelProto | None = None,
    centroids: np.ndarray | None = None,
    sparse: bool | None = None,
    ood_block: tuple[int, int] | None = None,
) -> onnx.ModelProto:
    """Head graph with input "features" [N, dim].

    Without `sub_model`: probabilities = softmax(temperature * (x @ projection + bias)),
    projection [dim, n_classes]. With `sub_model` (skl2onnx, input "reduced",
    output "probabilities"): reduced = x @ projection feeds it.
    `centroids` [n_classes', dim] (unit rows) adds output "similarity" [N]:
    the largest cosine between x and a centroid; with `ood_block` (start, end)
    the cosine is taken on those feature columns only (e.g. the encoder block
    of joined features) and `centroids` has end - start columns.
    """
    sparse = dim >= SPARSE_MIN_DIM if sparse is None else sparse
    r = projection.shape[1]
    mats = [projection.astype(np.float32)]
    fused_ood = centroids is not None and ood_block is None
    if centroids is not None and ood_block is None:
        mats.append(centroids.T.astype(np.float32))
    w_all = np.hstack(mats) if len(mats) > 1 else mats[0]
    m = w_all.shape[1]
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = [_const("W_all", w_all)]
    if sparse:
        n, i = _sparse_matmul("features", "W_all", "proj", m)
        nodes += n
        inits += i
    else:
        nodes.append(helper.make_node("MatMul", ["features", "W_all"], ["proj"]))
    inits += [
        _const("c_axis1", np.array([1], np.int64)),
        _const("c_0", np.array([0], np.int64)),
        _const("c_r", np.array([r], np.int64)),
        _const("c_m", np.array([m], np.int64)),
    ]
    nodes.append(helper.make_node("Slice", ["proj", "c_0", "c_r", "c_axis1"], ["first"]))
    outputs = [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, n_classes])]
    if sub_model is None:
        logits = "first"
        if bias is not None:
            inits.append(_const("bias", bias.astype(np.float32)))
            nodes.append(helper.make_node("Add", ["first", "bias"], ["logits_b"]))
            logits = "logits_b"
        inits.append(_const("temperature", np.array(temperature, np.float32)))
        nodes.append(helper.make_node("Mul", [logits, "temperature"], ["logits_t"]))
        nodes.append(helper.make_node("Softmax", ["logits_t"], ["probabilities"], axis=1))
    else:
        sub = compose.add_prefix(sub_model, "h_")
        nodes.append(helper.make_node("Identity", ["first"], ["h_reduced"]))
        nodes += list(sub.graph.node)
        inits += list(sub.graph.initializer)
        nodes.append(helper.make_node("Identity", ["h_probabilities"], ["probabilities"]))
    if centroids is not None:
        ood_x = "features"
        xnorm = "xnorm"
        if fused_ood:
            nodes.append(helper.make_node("Slice", ["proj", "c_r", "c_m", "c_axis1"], ["dots"]))
            if sparse:
                xnorm = "proj_rownorm"
        else:
            assert ood_block is not None
            inits += [
                _const("ood_start", np.array([ood_block[0]], np.int64)),
                _const("ood_end", np.array([ood_block[1]], np.int64)),
                _const("ood_centroids_T", centroids.T.astype(np.float32)),
            ]
            ood_x = "ood_x"
            nodes += [
                helper.make_node("Slice", ["features", "ood_start", "ood_end", "c_axis1"], [ood_x]),
                helper.make_node("MatMul", [ood_x, "ood_centroids_T"], ["dots"]),
            ]
        if xnorm == "xnorm":
            nodes.append(helper.make_node("ReduceL2", [ood_x], ["xnorm"], axes=[1], keepdims=1))
        nodes += [
            helper.make_node("Max", [xnorm, "eps"], ["xnorm_safe"]),
            helper.make_node("Div", ["dots", "xnorm_safe"], ["cos"]),
            helper.make_node("ReduceMax", ["cos"], ["similarity"], axes=[1], keepdims=0),
        ]
        inits.append(_const("eps", np.array(1e-12, np.float32)))
        outputs.append(helper.make_tensor_value_info("similarity", TensorProto.FLOAT, [None]))
    graph = helper.make_graph(
        nodes,
        "tracer_head",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, dim])],
        outputs,
        inits,
    )
    return _model(graph)


def neighbour_vote_graph(
    references: np.ndarray, labels: np.ndarray, n_classes: int, k: int, temperature: float
) -> onnx.ModelProto:
    """ "reduced" [N, r] -> "probabilities" [N, n_classes]: the k most similar unit-norm
    `references` vote for their labels with weight exp(temperature * (sim - best sim))."""
    k = min(k, len(references))
    onehot = np.zeros((len(references), n_classes), dtype=np.float32)
    onehot[np.arange(len(references)), labels] = 1.0
    inits = [
        _const("nv_refs_T", references.T.astype(np.float32)),
        _const("nv_onehot", onehot),
        _const("nv_k", np.array([k], np.int64)),
        _const("nv_temperature", np.array(temperature, np.float32)),
        _const("nv_eps", np.array(1e-12, np.float32)),
        _const("nv_0", np.array([0], np.int64)),
        _const("nv_1", np.array([1], np.int64)),
        _const("nv_2", np.array([2], np.int64)),
    ]
    nodes = [
        helper.make_node("ReduceL2", ["reduced"], ["nv_norm"], axes=[1], keepdims=1),
        helper.make_node("Max", ["nv_norm", "nv_eps"], ["nv_norm_safe"]),
        helper.make_node("Div", ["reduced", "nv_norm_safe"], ["nv_unit"]),
        helper.make_node("MatMul", ["nv_unit", "nv_refs_T"], ["nv_sims"]),
        helper.make_node("TopK", ["nv_sims", "nv_k"], ["nv_best", "nv_idx"], axis=1),
        helper.make_node("Slice", ["nv_best", "nv_0", "nv_1", "nv_1"], ["nv_top"]),
        helper.make_node("Sub", ["nv_best", "nv_top"], ["nv_gap"]),
        helper.make_node("Mul", ["nv_gap", "nv_temperature"], ["nv_scaled"]),
        helper.make_node("Exp", ["nv_scaled"], ["nv_weight"]),
        helper.make_node("Gather", ["nv_onehot", "nv_idx"], ["nv_hot"], axis=0),
        helper.make_node("Unsqueeze", ["nv_weight", "nv_2"], ["nv_weight3"]),
        helper.make_node("Mul", ["nv_hot", "nv_weight3"], ["nv_weighted"]),
        helper.make_node("ReduceSum", ["nv_weighted", "nv_1"], ["nv_votes"], keepdims=0),
        helper.make_node("ReduceSum", ["nv_votes", "nv_1"], ["nv_total"], keepdims=1),
        helper.make_node("Div", ["nv_votes", "nv_total"], ["probabilities"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tracer_neighbours",
        [helper.make_tensor_value_info("reduced", TensorProto.FLOAT, [None, references.shape[1]])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, n_classes])],
        inits,
    )
    return _model(graph)


def average_heads(heads: list[onnx.ModelProto]) -> onnx.ModelProto:
    """One head whose "probabilities" are the mean of `heads`' (all on input "features");
    "similarity" comes from the first head, when it has one."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    probs: list[str] = []
    for i, head in enumerate(heads):
        prefix = f"m{i}_"
        member = compose.add_prefix(head, prefix)
        for node in member.graph.node:
            for j, name in enumerate(node.input):
                if name == prefix + "features":
                    node.input[j] = "features"
        nodes += list(member.graph.node)
        inits += list(member.graph.initializer)
        probs.append(prefix + "probabilities")
    inits.append(_const("avg_scale", np.array(1.0 / len(heads), np.float32)))
    nodes += [
        helper.make_node("Sum", probs, ["avg_sum"]),
        helper.make_node("Mul", ["avg_sum", "avg_scale"], ["probabilities"]),
    ]
    outputs = [o for o in heads[0].graph.output if o.name == "probabilities"]
    if any(o.name == "similarity" for o in heads[0].graph.output):
        nodes.append(helper.make_node("Identity", ["m0_similarity"], ["similarity"]))
        outputs += [o for o in heads[0].graph.output if o.name == "similarity"]
    graph = helper.make_graph(nodes, "tracer_head", list(heads[0].graph.input), outputs, inits)
    return _model(graph)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid(d, v) for d, v in OPSET.items()]
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model
