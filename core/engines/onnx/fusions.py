"""Graph rewrites of the q8 preparation, on an encoder exported from PyTorch (all-MiniLM-L6-v2 here): each
one matches an exact pattern, computes the same numbers (tests/test_onnx_prepare.py checks), and leaves
anything that does not match as it was.  onnxruntime's own transformer fuser does not recognise this
export (its attention is torch's scaled_dot_product_attention with a NaN guard), hence these.
"""
from __future__ import annotations

import copy

import numpy as np

from .graph import onnx_module


def _index(g):
    """(initializers by name, producing node by output name, consumer count by tensor name) of a graph."""
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    return inits, producer, consumers

def gather_before_dequant(model) -> int:
    """Rewrite ``Gather(Cast(Q) * S, ids)`` (an int8 embedding table with a scale per row) into
    ``Cast(Gather(Q, ids)) * Gather(S, ids)``: the same numbers, but the table stays int8 in memory instead
    of being folded to fp32 when the graph is optimized (MiniLM's word table: 11 MB instead of 47 MB).
    Returns how many tables were rewritten."""
    onnx_module()
    from onnx import TensorProto, helper

    g = model.graph
    inits, producer, consumers = _index(g)
    dead, new, done = set(), [], 0
    for node in g.node:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        mul = producer.get(node.input[0]) if node.op_type == "Gather" and axis == 0 else None
        cast = producer.get(mul.input[0]) if mul is not None and mul.op_type == "Mul" else None
        if cast is None or cast.op_type != "Cast" or consumers.get(mul.output[0]) != 1 \
                or consumers.get(cast.output[0]) != 1:
            new.append(node)
            continue
        q, s = inits.get(cast.input[0]), inits.get(mul.input[1])
        if q is None or s is None or q.data_type not in (TensorProto.INT8, TensorProto.UINT8) \
                or len(q.dims) != 2 or list(s.dims) not in ([q.dims[0], 1], [q.dims[0]]):
            new.append(node)
            continue
        to = next(a.i for a in cast.attribute if a.name == "to")
        base, ids, out = node.name or node.output[0], node.input[1], node.output[0]
        scale_rows = f"{base}/scale_rows"
        new += [helper.make_node("Gather", [q.name, ids], [f"{base}/q_rows"], name=f"{base}/q_rows", axis=0),
                helper.make_node("Cast", [f"{base}/q_rows"], [f"{base}/f_rows"], name=f"{base}/f_rows", to=to),
                helper.make_node("Gather", [s.name, ids], [scale_rows], name=scale_rows, axis=0)]
        if len(s.dims) == 1:  # (rows,) scales: one per gathered row, broadcast over the hidden axis
            axes = f"{base}/axes"
            g.initializer.append(helper.make_tensor(axes, TensorProto.INT64, [1], [-1]))
            new.append(helper.make_node("Unsqueeze", [scale_rows, axes], [f"{base}/scale_e"], name=f"{base}/scale_e"))
            scale_rows = f"{base}/scale_e"
        new.append(helper.make_node("Mul", [f"{base}/f_rows", scale_rows], [out], name=f"{base}/dequant"))
        dead.update({id(mul), id(cast)})
        done += 1
    if done:
        keep = [copy.deepcopy(n) for n in new if id(n) not in dead]  # copies: deleting frees the originals
        del g.node[:]
        g.node.extend(keep)
    return done


def fuse_attention(model) -> int:
    """Replace each self-attention block exported from PyTorch's scaled_dot_product_attention (~25 small
    nodes per layer: reshapes, transposes, the mask arithmetic, softmax, a NaN guard) by one
    ``com.microsoft.MultiHeadAttention`` node on the Q, K, V projections, masked by attention_mask.
    onnxruntime's own BERT fuser does not recognise this export.  Returns how many blocks were fused; a
    block that does not match exactly is left as it is."""
    onnx_module()
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}

    def up(name: str) -> tuple[str, list]:
        """Follow input 0 through layout-only ops to the projection (an Add with a constant bias)."""
        path = []
        node = producer.get(name)
        while node is not None and node.op_type in ("Mul", "Reshape", "Transpose"):
            path.append(node)
            name = node.input[0]
            node = producer.get(name)
        return name, path

    def const(name: str):
        return numpy_helper.to_array(inits[name]) if name in inits else None

    mask_name = "corert/attn/mask_i32"
    fused, replaced = 0, {}
    for sm in [n for n in g.node if n.op_type == "Softmax"]:
        try:
            guard = next(n for n in g.node if n.op_type == "IsNaN" and n.input[0] == sm.output[0])
            where = next(n for n in g.node if n.op_type == "Where" and n.input[0] == guard.output[0])
            av = next(n for n in g.node if n.op_type == "MatMul" and n.input[0] == where.output[0])
            t_out = next(n for n in g.node if n.op_type == "Transpose" and n.input[0] == av.output[0])
            r_out = next(n for n in g.node if n.op_type == "Reshape" and n.input[0] == t_out.output[0])
            add_mask = producer[sm.input[0]]
            qk = producer[add_mask.input[0]]
        except (StopIteration, KeyError):
            continue
        if add_mask.op_type != "Add" or qk.op_type != "MatMul":
            continue
        q, q_path = up(qk.input[0])
        k, k_path = up(qk.input[1])
        v, _ = up(av.input[1])
        projections = [producer.get(x) for x in (q, k, v)]
        if any(p is None or p.op_type != "Add" for p in projections):
            continue
        # head size: the last constant of the Concat building Q's (batch, seq, -1, head) reshape
        q_reshape = next((n for n in reversed(q_path) if n.op_type == "Reshape"), None)
        shape_src = producer.get(q_reshape.input[1]) if q_reshape is not None else None
        head = const(shape_src.input[-1]) if shape_src is not None and shape_src.op_type == "Concat" else None
        bias = const(projections[0].input[1])
        if head is None or bias is None or bias.ndim != 1 or bias.shape[0] % int(head.reshape(-1)[0]):
            continue
        heads = bias.shape[0] // int(head.reshape(-1)[0])
        # the two scale Muls (sqrt(1/sqrt(head)) on each of Q and K) must multiply to MHA's default scale
        scales = [const(n.input[1]) for n in q_path + k_path if n.op_type == "Mul"]
        if len(scales) != 2 or any(s is None for s in scales) or \
                not np.isclose(float(scales[0]) * float(scales[1]), 1 / np.sqrt(int(head.reshape(-1)[0])), rtol=1e-4):
            continue
        replaced[r_out.output[0]] = helper.make_node(
            "MultiHeadAttention", [q, k, v, "", mask_name], [r_out.output[0]], name=f"corert/attn/{fused}",
            domain="com.microsoft", num_heads=heads)
        fused += 1
    if not fused:
        return 0
    keep = []
    for n in g.node:
        if n.output and n.output[0] in replaced:
            keep.append(replaced.pop(n.output[0]))  # same place in topological order
        else:
            keep.append(copy.deepcopy(n))
    keep.insert(0, helper.make_node("Cast", ["attention_mask"], [mask_name], name=mask_name, to=TensorProto.INT32))
    _set_nodes(model, keep)  # what only fed the old blocks goes (the shared mask arithmetic too)
    return fused


def pack_qkv(model) -> int:
    """Turn the three Q, K, V projections of each fused attention (same input, three MatMul + Add) into
    one MatMul + Add with the weights side by side and a Split: one wider matmul keeps the integer units
    busier than three narrow ones at a few tokens.  Run after :func:`fuse_attention`."""
    onnx_module()
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    inits, producer, consumers = _index(g)
    replace, dead, packed = {}, set(), 0
    for mha in [n for n in g.node if n.op_type == "MultiHeadAttention"]:
        adds = [producer.get(x) for x in mha.input[:3]]
        if any(a is None or a.op_type != "Add" or consumers.get(a.output[0]) != 1 for a in adds):
            continue
        mms = [producer.get(a.input[0]) for a in adds]
        if any(m is None or m.op_type != "MatMul" or m.input[1] not in inits or a.input[1] not in inits
               for m, a in zip(mms, adds)) or len({m.input[0] for m in mms}) != 1:
            continue
        ws = [numpy_helper.to_array(inits[m.input[1]]) for m in mms]
        bs = [numpy_helper.to_array(inits[a.input[1]]) for a in adds]
        if any(w.ndim != 2 or w.shape != ws[0].shape for w in ws) or any(b.shape != (ws[0].shape[1],) for b in bs):
            continue
        base = f"corert/qkv/{packed}"
        g.initializer.extend([numpy_helper.from_array(np.concatenate(ws, axis=1), f"{base}/weight"),
                              numpy_helper.from_array(np.concatenate(bs), f"{base}/bias"),
                              helper.make_tensor(f"{base}/split", TensorProto.INT64, [3], [ws[0].shape[1]] * 3)])
        replace[id(mms[0])] = [
            helper.make_node("MatMul", [mms[0].input[0], f"{base}/weight"], [f"{base}/xw"], name=f"{base}/MatMul"),
            helper.make_node("Add", [f"{base}/xw", f"{base}/bias"], [f"{base}/qkv"], name=f"{base}/Add"),
            helper.make_node("Split", [f"{base}/qkv", f"{base}/split"], list(mha.input[:3]), name=f"{base}/Split",
                             axis=-1)]
        dead.update(id(n) for n in mms[1:] + adds)
        packed += 1
    if not packed:
        return 0
    nodes = []
    for n in g.node:
        if id(n) in replace:
            nodes += replace[id(n)]
        elif id(n) not in dead:
            nodes.append(copy.deepcopy(n))
    # a packed MatMul sits where Q's did; K's and V's inputs are the same tensor, so the order holds
    _set_nodes(model, nodes)
    return packed


def _set_nodes(model, nodes: list) -> None:
    """Replace the graph's nodes, then drop nodes whose outputs nobody reads and initializers nobody uses;
    declare the com.microsoft domain the fused nodes live in."""
    from onnx import helper

    g = model.graph
    outputs = {o.name for o in g.output}
    while True:
        used = {i for n in nodes for i in n.input} | outputs
        alive = [n for n in nodes if any(o in used for o in n.output)]
        if len(alive) == len(nodes):
            break
        nodes = alive
    del g.node[:]
    g.node.extend(nodes)
    live = {i for n in nodes for i in n.input}
    kept_inits = [copy.deepcopy(i) for i in g.initializer if i.name in live]
    del g.initializer[:]
    g.initializer.extend(kept_inits)
    names = live | {o for n in nodes for o in n.output}
    kept_info = [copy.deepcopy(v) for v in g.value_info if v.name in names]
    del g.value_info[:]
    g.value_info.extend(kept_info)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def fuse_gelu(model) -> int:
    """Replace the exported exact GELU, ``x * (erf(x / sqrt 2) + 1) * 0.5`` (five nodes, in the order this
    export writes them, which onnxruntime's fuser does not match), by one ``com.microsoft.Gelu``."""
    onnx_module()
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    producer = {o: n for n in g.node for o in n.output}

    def only(name: str, op: str):
        c = consumers.get(name, [])
        return c[0] if len(c) == 1 and c[0].op_type == op else None

    def other_const(node, name: str):
        rest = [i for i in node.input if i != name]
        return float(numpy_helper.to_array(inits[rest[0]])) if len(rest) == 1 and rest[0] in inits else None

    replace, dead = {}, set()
    for erf in [n for n in g.node if n.op_type == "Erf"]:
        div = producer.get(erf.input[0])
        if div is None or div.op_type != "Div" or div.input[1] not in inits \
                or not np.isclose(float(numpy_helper.to_array(inits[div.input[1]])), np.sqrt(2.0), rtol=1e-5):
            continue
        x = div.input[0]
        add = only(erf.output[0], "Add")
        half = only(add.output[0], "Mul") if add is not None and other_const(add, erf.output[0]) == 1.0 else None
        last = only(half.output[0], "Mul") if half is not None and other_const(half, add.output[0]) == 0.5 else None
        if last is None or x not in last.input:
            continue
        replace[id(last)] = helper.make_node("Gelu", [x], [last.output[0]], name=f"corert/gelu/{len(replace)}",
                                             domain="com.microsoft")
        dead.update({id(div), id(erf), id(add), id(half)})
    if not replace:
        return 0
    _set_nodes(model, [replace[id(n)] if id(n) in replace else copy.deepcopy(n)
                       for n in g.node if id(n) not in dead])
    return len(replace)
