"""ONNX graph edits, built with the ``onnx`` helper API: the sentence-embedding tail (mean pooling over the
attention mask, L2 normalisation), a linear classifier head with softmax, checks of a graph's inputs, and
atomic saving.  The speed rewrites of the q8 preparation are in fusions.py.

Needed when a model is pulled or first prepared, never on the request path.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ...errors import ModelError

INPUTS_REQUIRED = ("input_ids", "attention_mask")
INPUTS_KNOWN = ("input_ids", "attention_mask", "token_type_ids")
EMBEDDING_OUTPUT = "sentence_embedding"
PROBABILITIES_OUTPUT = "probabilities"
_MIN_OPSET = 13  # ReduceSum/Unsqueeze take their axes as inputs from 13 on


def onnx_module():
    try:
        import onnx
    except ImportError:
        raise ModelError("preparing an ONNX graph needs the onnx package: pip install onnx "
                         "(or run the graph as shipped with --engine onnx:stock)") from None
    return onnx


def load_model(path: str):
    onnx = onnx_module()
    try:
        return onnx.load(path)
    except Exception as exc:  # DecodeError and friends: not a protobuf ModelProto
        raise ModelError(f"{path} is not an ONNX model ({type(exc).__name__}: {exc})") from exc


def check_inputs(names: Sequence[str], path: str) -> None:
    """An encoder graph takes input_ids and attention_mask (token_type_ids optional), nothing else."""
    missing = [n for n in INPUTS_REQUIRED if n not in names]
    extra = [n for n in names if n not in INPUTS_KNOWN]
    if missing or extra:
        raise ModelError(f"{path} has inputs {list(names)}; an encoder model must take input_ids and "
                         f"attention_mask (and optionally token_type_ids)"
                         + (f" — missing {missing}" if missing else "") + (f" — unknown {extra}" if extra else ""))


def _opset(model) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _rank(value_info) -> int | None:
    t = value_info.type.tensor_type
    return len(t.shape.dim) if t.HasField("shape") else None


def add_mean_pool_l2(model, hidden: str | None = None, name: str = "corert/pool"):
    """Append mean pooling over the attention mask and L2 normalisation to an encoder graph whose output is
    the last hidden state (batch, seq, hidden).  The graph's only output becomes ``sentence_embedding``
    (batch, hidden), exactly as sentence-transformers' Pooling(mean) + Normalize computes it."""
    onnx_module()
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    check_inputs([i.name for i in g.input], "the encoder graph")
    if _opset(model) < _MIN_OPSET:
        raise ModelError(f"the encoder graph uses opset {_opset(model)}; corert needs opset >= {_MIN_OPSET}")
    outs = {o.name: o for o in g.output}
    if not outs:
        raise ModelError("the encoder graph has no outputs")
    if hidden is None:
        hidden = "last_hidden_state" if "last_hidden_state" in outs else g.output[0].name
    if hidden not in outs:
        raise ModelError(f"the encoder graph has no output {hidden!r} (outputs: {list(outs)})")
    if _rank(outs[hidden]) not in (None, 3):
        raise ModelError(f"not an embedding model: its output {hidden!r} has rank {_rank(outs[hidden])}, "
                         f"not the (batch, seq, hidden) states of an encoder")

    def c(n: str, value) -> str:  # a constant initializer, named under this tail
        g.initializer.append(numpy_helper.from_array(np.asarray(value), f"{name}/{n}"))
        return f"{name}/{n}"

    n = lambda op, ins, out, **kw: helper.make_node(op, ins, [f"{name}/{out}"], name=f"{name}/{out}", **kw)
    axis1, axis2 = c("axis1", np.array([1], np.int64)), c("axis2", np.array([2], np.int64))
    g.node.extend([
        n("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT),                        # (b, s)
        n("Unsqueeze", [f"{name}/mask_f", axis2], "mask_e"),                                  # (b, s, 1)
        n("Mul", [hidden, f"{name}/mask_e"], "masked"),                                       # (b, s, h)
        n("ReduceSum", [f"{name}/masked", axis1], "summed", keepdims=0),                      # (b, h)
        n("ReduceSum", [f"{name}/mask_e", axis1], "count", keepdims=0),                       # (b, 1)
        # sentence-transformers clamps the count at 1e-9 and the norm at 1e-12 (F.normalize)
        n("Max", [f"{name}/count", c("min_count", np.array(1e-9, np.float32))], "count_c"),
        n("Div", [f"{name}/summed", f"{name}/count_c"], "mean"),                              # (b, h)
        n("Mul", [f"{name}/mean", f"{name}/mean"], "sq"),
        n("ReduceSum", [f"{name}/sq", axis1], "sumsq", keepdims=1),                          # (b, 1)
        n("Sqrt", [f"{name}/sumsq"], "norm"),
        n("Max", [f"{name}/norm", c("min_norm", np.array(1e-12, np.float32))], "norm_c"),
    ])
    g.node.append(helper.make_node("Div", [f"{name}/mean", f"{name}/norm_c"], [EMBEDDING_OUTPUT],
                                   name=f"{name}/normalize"))
    hidden_size = _last_dim(outs[hidden])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(EMBEDDING_OUTPUT, TensorProto.FLOAT, ["batch", hidden_size]))
    return model


def _last_dim(value_info):
    dims = value_info.type.tensor_type.shape.dim
    if dims and dims[-1].HasField("dim_value"):
        return dims[-1].dim_value
    return "hidden"


def add_linear_softmax(model, weight: np.ndarray, bias: np.ndarray, source: str = EMBEDDING_OUTPUT,
                       name: str = "corert/head"):
    """Append ``softmax(x @ weight.T + bias)`` (a multinomial logistic regression) on ``source``; the graph's
    only output becomes ``probabilities`` (batch, classes).  weight: (classes, hidden), bias: (classes,)."""
    onnx_module()
    from onnx import TensorProto, helper, numpy_helper

    weight = np.asarray(weight, np.float32)
    bias = np.asarray(bias, np.float32)
    if weight.ndim != 2 or bias.shape != (weight.shape[0],):
        raise ModelError(f"classifier head shapes do not match: weight {weight.shape}, bias {bias.shape}")
    g = model.graph
    g.initializer.extend([numpy_helper.from_array(np.ascontiguousarray(weight.T), f"{name}/weight_t"),
                          numpy_helper.from_array(bias, f"{name}/bias")])
    g.node.extend([
        helper.make_node("MatMul", [source, f"{name}/weight_t"], [f"{name}/xw"], name=f"{name}/MatMul"),
        helper.make_node("Add", [f"{name}/xw", f"{name}/bias"], [f"{name}/logits"], name=f"{name}/Add"),
        helper.make_node("Softmax", [f"{name}/logits"], [PROBABILITIES_OUTPUT], name=f"{name}/Softmax", axis=-1),
    ])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(PROBABILITIES_OUTPUT, TensorProto.FLOAT,
                                                  ["batch", int(weight.shape[0])]))
    return model


def save_atomic(model, path: str) -> None:
    """Write a ModelProto so that ``path`` is either absent or whole (tmp file + os.replace)."""
    import os
    import tempfile

    onnx = onnx_module()
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".partial", dir=d)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.chmod(tmp, 0o644)  # mkstemp made it private; a model file is readable like any other
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
