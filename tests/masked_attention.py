"""Small quantized attention models with integer inputs and an infinite padding mask, written
directly in ONNX (no training, built in milliseconds).

``build_masked_attention`` writes what a QDQ export of a one-layer text classifier looks like:

    input_ids int64 [N, S] -> Gather(token table [V, H])  (+ Gather(type table [2, H]) of token_type_ids)
      -> QDQ -> q, k, v = MatMul(W) -> QDQ each
      scores = MatMul(q, k^T) * 1/sqrt(H)
      padding = Where(attention_mask > 0, 0, -inf)          (mask="where": Hugging Face's form)
             or Where(attention_mask == 0, -inf, scores)    (mask="masked_fill": torch's masked_fill)
             or scores + a constant causal mask of -inf     (mask="causal": no mask input)
      Softmax -> QDQ -> MatMul(v) -> ReduceMean over tokens -> QDQ -> Gemm -> logits [N, 10]

The weights come from a seeded generator; the quantizer scales are fixed (the activations stay
well inside their ranges for ids below ``VOCABULARY``).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEQUENCE = 8
HIDDEN = 8
VOCABULARY = 20
CLASSES = 10
MASKS = ("where", "masked_fill", "causal")


def build_masked_attention(mask: str = "where", token_types: bool = True, seed: int = 0, batch="N",
                           infinity: float = -np.inf) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    s, h = SEQUENCE, HIDDEN
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (VOCABULARY, h)).astype(np.float32), "token_table"),
        numpy_helper.from_array(rng.normal(0, 0.5, (2, h)).astype(np.float32), "type_table"),
        numpy_helper.from_array(rng.normal(0, 0.4, (h, h)).astype(np.float32), "wq"),
        numpy_helper.from_array(rng.normal(0, 0.4, (h, h)).astype(np.float32), "wk"),
        numpy_helper.from_array(rng.normal(0, 0.4, (h, h)).astype(np.float32), "wv"),
        numpy_helper.from_array(rng.normal(0, 0.4, (CLASSES, h)).astype(np.float32), "wc"),
        numpy_helper.from_array(np.zeros(CLASSES, np.float32), "bc"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "perm_axes"),
        numpy_helper.from_array(np.array(1 / np.sqrt(h), np.float32), "score_scale"),
        numpy_helper.from_array(np.array(0, np.int64), "zero_int"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(infinity, np.float32), "minus_infinity"),
        numpy_helper.from_array(np.array([1], np.int64), "axis_one"),
        numpy_helper.from_array(np.array(0.05, np.float32), "s_embed"),
        numpy_helper.from_array(np.array(128, np.uint8), "zp_embed"),
        numpy_helper.from_array(np.array(0.05, np.float32), "s_qkv"),
        numpy_helper.from_array(np.array(128, np.uint8), "zp_qkv"),
        numpy_helper.from_array(np.array(1 / 255, np.float32), "s_probs"),
        numpy_helper.from_array(np.array(0, np.uint8), "zp_probs"),
        numpy_helper.from_array(np.array(0.02, np.float32), "s_pool"),
        numpy_helper.from_array(np.array(128, np.uint8), "zp_pool"),
    ]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch, s])]
    nodes = [helper.make_node("Gather", ["token_table", "input_ids"], ["tokens"], name="token_embedding")]
    embedded = "tokens"
    if mask in ("where", "masked_fill"):
        inputs.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [batch, s]))
    if token_types:
        inputs.append(helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, [batch, s]))
        nodes += [helper.make_node("Gather", ["type_table", "token_type_ids"], ["types"], name="type_embedding"),
                  helper.make_node("Add", ["tokens", "types"], ["embedded"], name="embedding_sum")]
        embedded = "embedded"
    nodes += _qdq(embedded, "x", "embed")
    for name in ("q", "k", "v"):
        nodes.append(helper.make_node("MatMul", ["x", f"w{name}"], [f"{name}_raw"], name=f"{name}_projection"))
        nodes += _qdq(f"{name}_raw", name, "qkv", stem=name)
    nodes += [
        helper.make_node("Transpose", ["k"], ["k_t"], name="keys_transposed", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "k_t"], ["dot"], name="scores_dot"),
        helper.make_node("Mul", ["dot", "score_scale"], ["scores"], name="scores_scaled"),
    ]
    if mask == "where":
        nodes += [
            helper.make_node("Greater", ["attention_mask", "zero_int"], ["attend"], name="attend"),
            helper.make_node("Unsqueeze", ["attend", "axis_one"], ["attend_rows"], name="attend_rows"),
            helper.make_node("Where", ["attend_rows", "zero", "minus_infinity"], ["padding"], name="padding"),
            helper.make_node("Add", ["scores", "padding"], ["masked"], name="masked_scores"),
        ]
    elif mask == "masked_fill":
        nodes += [
            helper.make_node("Equal", ["attention_mask", "zero_int"], ["padded"], name="padded"),
            helper.make_node("Unsqueeze", ["padded", "axis_one"], ["padded_rows"], name="padded_rows"),
            helper.make_node("Where", ["padded_rows", "minus_infinity", "scores"], ["masked"], name="masked_fill"),
        ]
    elif mask == "causal":
        causal = np.triu(np.full((s, s), infinity, np.float32), k=1)
        inits.append(numpy_helper.from_array(causal, "causal_mask"))
        nodes.append(helper.make_node("Add", ["scores", "causal_mask"], ["masked"], name="causal_scores"))
    else:
        raise ValueError(mask)
    nodes.append(helper.make_node("Softmax", ["masked"], ["probs_raw"], name="softmax", axis=-1))
    nodes += _qdq("probs_raw", "probs", "probs")
    nodes += [
        helper.make_node("MatMul", ["probs", "v"], ["attended"], name="attended"),
        helper.make_node("ReduceMean", ["attended", "axis_one"], ["pooled_raw"], name="pool", keepdims=0),
    ]
    nodes += _qdq("pooled_raw", "pooled", "pool")
    nodes.append(helper.make_node("Gemm", ["pooled", "wc", "bc"], ["logits"], name="classifier", transB=1))
    graph = helper.make_graph(nodes, f"attention_{mask}", inputs,
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, CLASSES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model


def _qdq(source: str, target: str, params: str, stem: str = "") -> list[onnx.NodeProto]:
    stem = stem or params
    return [
        helper.make_node("QuantizeLinear", [source, f"s_{params}", f"zp_{params}"], [f"{target}_q"],
                         name=f"{stem}_quant"),
        helper.make_node("DequantizeLinear", [f"{target}_q", f"s_{params}", f"zp_{params}"], [target],
                         name=f"{stem}_dequant"),
    ]


def text_batch(samples: int, seed: int = 1, token_types: bool = True, mask: bool = True) -> dict:
    """Seeded inputs: ids below ``VOCABULARY``, masks of 1s followed by 0s (at least 3 tokens),
    token types 0 then 1; int64 each."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, SEQUENCE + 1, size=samples)
    attend = (np.arange(SEQUENCE)[None, :] < lengths[:, None]).astype(np.int64)
    arrays = {"input_ids": rng.integers(1, VOCABULARY, size=(samples, SEQUENCE)).astype(np.int64) * attend}
    if mask:
        arrays["attention_mask"] = attend
    if token_types:
        arrays["token_type_ids"] = (np.arange(SEQUENCE)[None, :] >= lengths[:, None] // 2).astype(np.int64) * attend
    return arrays
