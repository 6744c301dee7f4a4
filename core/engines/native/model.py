"""The transformer of the native engine: llama, qwen2 and gemma3 decoder layers over :class:`QMatrix` weights.

One ``forward`` evaluates any number of rows (tokens of one or several sequences, each with its position);
K/V go to and attention reads from the KV store the kv_cache plugin allocated.  Every kernel computes each
row independently with the same code, so a row's logits do not depend on the batch it was in.
"""
from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from ...errors import InputError, ModelError
from ...models.gguf_header import GGUFHeader
from . import ops
from . import dequant
from ...kernels.f16 import F16_TO_F32
from .embedding import EmbeddingTable
from .products import PRODUCTS
from .weights import QMatrix, SplitMatrix, TensorSource
from ...tree import TreeMask

SUPPORTED_ARCHS = ("llama", "qwen2", "gemma3")
#: a prompt's rows go through the FFN this many at a time: its gate|up output (2 * d_ff f32 a row) and the
#: gated activations are the forward's largest buffers, and per row they would grow with the block
#: (SmolLM2's 256-row block: 4.7 MB, Qwen 1.5B's: 27 MB); every row is computed independently, so the
#: results are the same bits
FFN_ROWS = 64
#: ... and this many with a bulk path (amx-bf16): its kernel dequantizes each weight panel once a call, so
#: 64-row chunks dequantized every panel again four times a 256-row block (Qwen 1.5B prompt 199 -> 224 tok/s
#: with 256, amx 152 -> 137: bench-results/s14-bf14/gen-ffn256-*.json; SmolLM2 3.86x -> 4.85x llama.cpp's) ...
BULK_FFN_ROWS = 256
#: ... unless a chunk's buffers (gate|up out, activations: 3 d_ff f32 a row) pass this share of the weights'
#: bytes: SmolLM2's 4.7 MB beside 94 MB of weights cost its peak RSS 3 MB, over raw llama.cpp's
#: (bench-results/s14-lead/rss/), so it keeps 64
BULK_FFN_SHARE = 0.04
#: gemma3's layers are local (sliding window) but every n-th, when the GGUF gives no pattern (llama.cpp's 6)
GEMMA3_SWA_PERIOD = 6


def header_arrays(key: str) -> bool:
    """The array-valued metadata the native engine reads (``read_header``'s want_arrays): gemma3's per-layer
    sliding-window flags, when a GGUF gives them as an array."""
    return key.endswith(".attention.sliding_window_pattern")


@attrs.frozen
class ModelConfig:
    arch: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    eps: float
    rope_base: float
    rope_dim: int
    rope_neox: bool  # qwen2 rotates (i, i + d/2) pairs; llama GGUFs are permuted for adjacent pairs
    n_vocab: int
    ctx_train: int
    # gemma3 (the llama/qwen2 defaults leave the layer as it was)
    gemma: bool = False  # q/k norms, post-attention and post-FFN norms, GELU-tanh gate, sqrt(d) embedding scale
    attn_scale: float = 0.0  # scores = q . k * attn_scale (0: 1 / sqrt(head_dim))
    window: int = 0  # local layers attend to the last ``window`` positions (0: no local layers)
    local_layers: tuple[bool, ...] = ()  # per layer: local (sliding window) or global
    rope_base_local: float = 10000.0
    softcap: float = 0.0  # final logits = softcap * tanh(logits / softcap) (0: none)

    @classmethod
    def from_header(cls, header: GGUFHeader) -> "ModelConfig":
        """The hyperparameters, each checked for type and range (the kernels index buffers by them)."""
        arch = header.architecture
        if arch not in SUPPORTED_ARCHS:
            raise ModelError(f"{header.path}: architecture {arch!r} is not supported by the native engine "
                             f"(supported: {', '.join(SUPPORTED_ARCHS)}); use --engine llama.cpp")

        def count(key: str, default: int | None = None, hi: int = 1 << 20) -> int:
            return header.int_value(f"{arch}.{key}", default, lo=1, hi=hi)

        d_model, n_heads = count("embedding_length"), count("attention.head_count", hi=4096)
        if f"{arch}.attention.key_length" not in header.metadata and d_model % n_heads:
            raise ModelError(f"{header.path}: embedding_length {d_model} is not a multiple of head_count "
                             f"{n_heads}")
        head_dim = count("attention.key_length", d_model // n_heads, hi=4096)
        if count("attention.value_length", head_dim, hi=4096) != head_dim:
            raise ModelError(f"{header.path}: attention.value_length differs from key_length; the native "
                             f"engine supports equal key and value heads only")
        n_kv_heads = count("attention.head_count_kv", n_heads, hi=4096)
        if n_heads % n_kv_heads:
            raise ModelError(f"{header.path}: head_count {n_heads} is not a multiple of head_count_kv "
                             f"{n_kv_heads}")
        rope_dim = count("rope.dimension_count", head_dim, hi=4096)
        if rope_dim > head_dim or rope_dim % 2:
            raise ModelError(f"{header.path}: rope.dimension_count {rope_dim} must be even and at most the "
                             f"head size {head_dim}")
        emb = header.tensor("token_embd.weight")
        if len(emb.shape) != 2 or emb.shape[1] < 1:
            raise ModelError(f"{header.path}: token_embd.weight has shape {emb.shape}, expected ({d_model}, n_vocab)")
        n_layers = count("block_count", hi=4096)
        cfg = cls(arch=arch, n_layers=n_layers, d_model=d_model, n_heads=n_heads,
                  n_kv_heads=n_kv_heads, head_dim=head_dim, d_ff=count("feed_forward_length"),
                  eps=header.float_value(f"{arch}.attention.layer_norm_rms_epsilon"),
                  rope_base=header.float_value(f"{arch}.rope.freq_base", 10000.0),
                  rope_dim=rope_dim, rope_neox=arch != "llama", n_vocab=int(emb.shape[1]),
                  ctx_train=count("context_length", 2048, hi=2**31 - 1))
        return cfg._gemma3(header) if arch == "gemma3" else cfg

    def _gemma3(self, header: GGUFHeader) -> "ModelConfig":
        """gemma3's settings, read as llama.cpp reads them: a sliding window when the GGUF gives one, on
        every layer but each 6th (or the GGUF's pattern: a period or one flag per layer); local layers rotate
        with rope.freq_base_swa (default 10000); queries scaled by 1/sqrt(head_dim), except the 62-layer
        model's 1/sqrt(d_model / n_heads); logits soft-capped only when the GGUF says so.  The GGUF stores
        Gemma's norm weights as (1 + w) already (the converter adds the 1), so they are plain RMSNorms."""
        a, L = self.arch, self.n_layers
        window = header.int_value(f"{a}.attention.sliding_window", 0, hi=2**31 - 1)
        local: tuple[bool, ...] = (False,) * L
        if window:
            key = f"{a}.attention.sliding_window_pattern"
            pattern = header.metadata.get(key)
            if pattern is None and key in header.metadata:
                raise ModelError(f"{header.path}: metadata {key} was not read (an array the loader skipped)")
            if pattern is not None and not np.isscalar(pattern):
                flags = [bool(f) for f in np.asarray(pattern).reshape(-1)]
                if len(flags) != L:
                    raise ModelError(f"{header.path}: {key} has {len(flags)} flags for {L} layers")
                local = tuple(flags)
            else:
                period = header.int_value(key, GEMMA3_SWA_PERIOD, hi=4096)
                local = tuple(period == 0 or i % period < period - 1 for i in range(L))
        per_head = self.d_model / self.n_heads if L == 62 else self.head_dim
        return attrs.evolve(
            self, gemma=True, attn_scale=float(1.0 / np.sqrt(np.float32(per_head))), window=window,
            local_layers=local, rope_base_local=header.float_value(f"{a}.rope.freq_base_swa", 10000.0),
            softcap=header.float_value(f"{a}.final_logit_softcapping", 0.0, positive=False))

    def tensor_shapes(self, has_bias: bool, has_output: bool) -> dict[str, tuple[int, ...]]:
        """The GGUF shape (innermost dimension first) of every tensor the engine reads."""
        d, q, kv, f, v = self.d_model, self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim, \
            self.d_ff, self.n_vocab
        shapes = {"token_embd.weight": (d, v), "output_norm.weight": (d,)}
        if has_output:
            shapes["output.weight"] = (d, v)
        for i in range(self.n_layers):
            p = f"blk.{i}."
            shapes.update({p + "attn_norm.weight": (d,), p + "attn_q.weight": (d, q), p + "attn_k.weight": (d, kv),
                           p + "attn_v.weight": (d, kv), p + "attn_output.weight": (q, d), p + "ffn_norm.weight": (d,),
                           p + "ffn_gate.weight": (d, f), p + "ffn_up.weight": (d, f), p + "ffn_down.weight": (f, d)})
            if has_bias:
                shapes.update({p + "attn_q.bias": (q,), p + "attn_k.bias": (kv,), p + "attn_v.bias": (kv,)})
            if self.gemma:
                shapes.update({p + "attn_q_norm.weight": (self.head_dim,), p + "attn_k_norm.weight": (self.head_dim,),
                               p + "post_attention_norm.weight": (d,), p + "post_ffw_norm.weight": (d,)})
        return shapes

    def check_tensors(self, header: GGUFHeader) -> None:
        """Every tensor present with the shape the hyperparameters give, and no layer beyond block_count:
        the kernels run unchecked over these sizes, so a mismatch must stop here."""
        have = {t.name: t.shape for t in header.tensors}
        has_bias = any(n.startswith("blk.") and n.endswith(".attn_q.bias") for n in have)  # then every layer
        shapes = self.tensor_shapes(has_bias, "output.weight" in have)
        for name, shape in shapes.items():
            got = have.get(name)
            if got is None:
                raise ModelError(f"{header.path}: tensor {name!r} is missing")
            if got != shape:
                raise ModelError(f"{header.path}: tensor {name!r} has shape {got}, the model's hyperparameters "
                                 f"give {shape}")
        for name in have:
            if name.startswith("blk.") and name not in shapes and name.split(".")[1].isdigit() \
                    and int(name.split(".")[1]) >= self.n_layers:
                raise ModelError(f"{header.path}: tensor {name!r} belongs to a layer beyond block_count "
                                 f"{self.n_layers}")


def bind_product(products, w: QMatrix | SplitMatrix, role: str = ""):
    """``run(x, bulk=None)``: x (rows, w.cols) f32 times w's transpose by the variant's ``products`` for a
    matrix of ``role`` (products.ROLES; a variant may run some roles' products differently), (rows, w.rows)
    f32.  ``bulk`` (bool per row) marks the rows the variant's bulk kernels take (products.bulk_path: the
    bf16 tiles), the others take the exact ones; each row's result depends only on the row and its path.
    The kernels are chosen here, once, not on every product."""
    exact = _bind_rows(products, w, role, False)
    if not products.bulk_path:
        return lambda x, bulk=None: exact(x)
    fast = _bind_rows(products, w, role, True)

    def run(x: np.ndarray, bulk: np.ndarray | None = None) -> np.ndarray:
        if bulk is None:
            return exact(x)
        k = int(bulk.sum())
        if k == x.shape[0]:
            return fast(x)
        if k == 0:
            return exact(x)
        out = np.empty((x.shape[0], w.rows), np.float32)
        if bulk[:k].all():  # a prompt's rows then its last (a batch step's too: BatchRunner): halves, no copies
            fast(x[:k], out[:k])
            exact(x[k:], out[k:])
            return out
        # any other order (a step where several prompts end): each path's rows gathered, in one call
        out[bulk] = fast(np.ascontiguousarray(x[bulk]))
        out[~bulk] = exact(np.ascontiguousarray(x[~bulk]))
        return out
    return run


def _bind_rows(products, w: QMatrix | SplitMatrix, role: str, bulk: bool):
    """bind_product's run of every row on one path (``bulk`` or the exact one): ``run(x, out=None)``, into
    ``out`` (C-contiguous rows) when given."""
    if isinstance(w, SplitMatrix):
        runs = [(products.bind(p.kind, p.parts, p.cols, role, bulk), p.rows) for p in w.pieces]
        total = w.rows

        def run_split(x: np.ndarray, into: np.ndarray | None = None) -> np.ndarray:
            if x.shape[0] != 1:
                outs = []
                for run, rows in runs:
                    outs.append(np.empty((x.shape[0], rows), np.float32))
                    run(x, outs[-1])
                if into is None:
                    return np.concatenate(outs, axis=1)
                return np.concatenate(outs, axis=1, out=into)
            # one row (decode): each piece writes its own columns of the row, a C-contiguous (1, rows) view,
            # so the kernels are the ones a whole row gets and nothing is copied
            out = np.empty((1, total), np.float32) if into is None else into
            c = 0
            for run, rows in runs:
                run(x, out[0, c:c + rows][None])
                c += rows
            return out
        return run_split
    run, rows = products.bind(w.kind, w.parts, w.cols, role, bulk), w.rows

    def run_one(x: np.ndarray, into: np.ndarray | None = None) -> np.ndarray:
        out = np.empty((x.shape[0], rows), np.float32) if into is None else into
        run(x, out)
        return out
    return run_one


def product(products, w: QMatrix | SplitMatrix, x: np.ndarray, role: str = "") -> np.ndarray:
    """x (rows, w.cols) f32 times w's transpose (bind_product's run, once)."""
    return bind_product(products, w, role)(x)


@attrs.define
class Layer:
    attn_norm: np.ndarray  # (d_model,)
    wqkv: QMatrix | SplitMatrix  # rows: [q (n_heads*hd) | k (n_kv*hd) | v (n_kv*hd)]
    bqkv: np.ndarray  # qwen2's q/k/v biases, same row order (empty: no bias)
    wo: QMatrix
    ffn_norm: np.ndarray
    wgate_up: QMatrix  # rows: [gate (d_ff) | up (d_ff)]
    wdown: QMatrix
    # gemma3 only (empty otherwise): q/k norms (head_dim,), post-attention and post-FFN norms (d_model,)
    q_norm: np.ndarray = attrs.field(factory=lambda: np.empty(0, np.float32))
    k_norm: np.ndarray = attrs.field(factory=lambda: np.empty(0, np.float32))
    post_attn_norm: np.ndarray = attrs.field(factory=lambda: np.empty(0, np.float32))
    post_ffn_norm: np.ndarray = attrs.field(factory=lambda: np.empty(0, np.float32))


@attrs.define
class Transformer:
    cfg: ModelConfig
    source: TensorSource  # the memory-mapped file (its pages let go after the load)
    embed: EmbeddingTable  # token_embd's rows, read from the file as looked up
    layers: list[Layer]
    out_norm: np.ndarray
    output: QMatrix  # (n_vocab, d_model)
    variant: str
    _products: Any = attrs.field(init=False, repr=False)
    _rope: ops.RopeTable = attrs.field(init=False, repr=False)
    _rope_local: ops.RopeTable = attrs.field(init=False, repr=False)  # gemma3's local layers' base
    _runs: dict = attrs.field(init=False, repr=False)  # (id(matrix), role) -> (matrix, its bind_product run)
    _bulk_ffn_rows: int = attrs.field(init=False, repr=False)  # the bulk path's FFN chunk (_ffn_rows_bulk)

    def __attrs_post_init__(self) -> None:
        self._products = PRODUCTS[self.variant]
        self._runs = {}
        self._rope = ops.RopeTable(self.cfg.rope_dim, self.cfg.rope_base)
        self._rope_local = ops.RopeTable(self.cfg.rope_dim, self.cfg.rope_base_local)
        self._bulk_ffn_rows = 0  # set at the first forward with bulk rows (weight_bytes reads every matrix)

    @classmethod
    def load(cls, header: GGUFHeader, variant: str, layout_cache: str = "off") -> "Transformer":
        """``layout_cache``: "auto", "off" or a directory (see layout_cache.py)."""
        from .support import unsupported_tensor

        cfg = ModelConfig.from_header(header)
        cfg.check_tensors(header)
        bad = unsupported_tensor(header)
        if bad is not None:
            raise ModelError(f"{header.path}: {bad}; use --engine llama.cpp")
        src = TensorSource(header, PRODUCTS[variant], layout_cache)
        try:
            layers = []
            for i in range(cfg.n_layers):
                p = f"blk.{i}."
                bias = np.empty(0, np.float32)
                if src.has(p + "attn_q.bias"):
                    bias = np.concatenate([src.vector(p + n) for n in ("attn_q.bias", "attn_k.bias",
                                                                        "attn_v.bias")])
                extra = {}
                if cfg.gemma:
                    extra = {k: src.vector(p + n) for k, n in (
                        ("q_norm", "attn_q_norm.weight"), ("k_norm", "attn_k_norm.weight"),
                        ("post_attn_norm", "post_attention_norm.weight"), ("post_ffn_norm", "post_ffw_norm.weight"))}
                layers.append(Layer(
                    attn_norm=src.vector(p + "attn_norm.weight"),
                    wqkv=src.fused([p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"]),
                    bqkv=bias, wo=src.matrix([p + "attn_output.weight"]),
                    ffn_norm=src.vector(p + "ffn_norm.weight"),
                    wgate_up=src.matrix([p + "ffn_gate.weight", p + "ffn_up.weight"]),
                    wdown=src.matrix([p + "ffn_down.weight"]), **extra))
            # no output.weight: the output projection is tied to the embedding table
            output = src.matrix(["output.weight" if src.has("output.weight") else "token_embd.weight"])
            out_norm = src.vector("output_norm.weight")
            emb = src.info("token_embd.weight")
            src.raw_rows(emb)  # a type and shape the lookup decodes
            embed = EmbeddingTable(header.path, header.data_offset, emb)
        except BaseException:
            src.close()
            raise
        src.drop_pages()
        q_rows = cfg.n_heads * cfg.head_dim
        if layers and layers[0].wqkv.rows != q_rows + 2 * cfg.n_kv_heads * cfg.head_dim:
            raise ModelError(f"{header.path}: attention tensors do not match {cfg.n_heads} heads of "
                             f"{cfg.head_dim}")
        return cls(cfg, src, embed, layers, out_norm, output, variant)

    def matrices(self) -> list[QMatrix]:
        """Every weight matrix, a split one's pieces each."""
        mats = [self.output]
        for layer in self.layers:
            for w in (layer.wqkv, layer.wo, layer.wgate_up, layer.wdown):
                mats += w.pieces if isinstance(w, SplitMatrix) else [w]
        return mats

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weights held in memory (embedding rows are read from the file as looked up)."""
        return sum(m.nbytes for m in self.matrices())

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.weight_bytes / sum(m.rows * m.cols for m in self.matrices())

    def settle_pages(self):
        """The weights mapped from the layout cache made resident in 2 MiB pages (huge_pages.settle); its
        report, or None (nothing mapped, or not Linux)."""
        from .huge_pages import mapped_files, settle

        return settle(mapped_files(p for m in self.matrices() for p in m.parts))

    def close(self) -> None:
        self.embed.close()
        self.source.close()

    def _mm(self, w: QMatrix | SplitMatrix, x: np.ndarray, role: str, bulk: np.ndarray | None = None) -> np.ndarray:
        got = self._runs.get((id(w), role))
        if got is None:  # the entry keeps w alive, so no other matrix can take its id
            got = self._runs[id(w), role] = (w, bind_product(self._products, w, role))
        return got[1](x, bulk)

    def _ffn(self, layer: Layer, x: np.ndarray, h: np.ndarray, act: np.ndarray, nxt: np.ndarray,
             bulk: np.ndarray | None) -> None:
        """The FFN of every row, act's row count at a time: x += down(gate(h) * up(h)) (gemma3: normed first),
        then h = the next norm of x.  A chunk reads and writes its own rows of h only."""
        n, step = x.shape[0], act.shape[0]
        if n <= step:  # one chunk (every decode step): no slices to make
            self._ffn_rows(layer, x, h, act, nxt, ops.for_rows(n), bulk)
            return
        for r0 in range(0, n, step):
            r1 = min(n, r0 + step)
            self._ffn_rows(layer, x[r0:r1], h[r0:r1], act[:r1 - r0], nxt, ops.for_rows(r1 - r0),
                           None if bulk is None else bulk[r0:r1])

    def _ffn_rows(self, layer: Layer, x: np.ndarray, h: np.ndarray, a: np.ndarray, nxt: np.ndarray,
                  rows: ops.RowOps, bulk: np.ndarray | None) -> None:
        cfg = self.cfg
        rows.gated(self._mm(layer.wgate_up, h, "gate_up", bulk), a, cfg.gemma)
        if cfg.gemma:
            rows.add_normed(x, self._mm(layer.wdown, a, "down", bulk), layer.post_ffn_norm, nxt, cfg.eps, h)
        else:
            rows.add_rmsnorm(x, self._mm(layer.wdown, a, "down", bulk), nxt, cfg.eps, h)

    def _ffn_rows_bulk(self) -> int:
        if not self._bulk_ffn_rows:
            fits = BULK_FFN_ROWS * 3 * self.cfg.d_ff * 4 <= BULK_FFN_SHARE * self.weight_bytes
            self._bulk_ffn_rows = BULK_FFN_ROWS if fits else FFN_ROWS
        return self._bulk_ffn_rows

    @property
    def bulk_path(self) -> bool:
        """Whether forward's ``bulk`` rows take other kernels than the rest (products.bulk_path)."""
        return self._products.bulk_path

    def bulk_rows(self, n: int, logit_rows: np.ndarray) -> np.ndarray | None:
        """The default ``bulk`` of a forward of ``n`` rows: the rows whose logits it does not return (a
        prompt's but its last), when the variant has a bulk path; None otherwise."""
        if not self.bulk_path or len(logit_rows) >= n:
            return None
        bulk = np.ones(n, np.bool_)
        bulk[np.asarray(logit_rows, np.int64)] = False
        return bulk

    def forward(self, ids: np.ndarray, seq_ids: np.ndarray, positions: np.ndarray, kv,
                logit_rows: np.ndarray, tree: TreeMask | None = None,
                bulk: np.ndarray | None = None) -> np.ndarray:
        """Run rows ``ids`` (int32) at ``positions`` of sequences ``seq_ids`` through the model, writing
        their K/V to ``kv`` (already reserved); returns the logits of rows ``logit_rows``,
        shape (len(logit_rows), n_vocab).  With ``tree`` the rows are token-tree nodes stored at slots
        ``positions``: each is rotated at its depth in the tree and attends to its context and ancestors.

        ``bulk`` (bool per row) marks the rows whose products take the variant's bulk path
        (amx-bf16's bf16 tiles; other variants have one path).  A row's bits depend only on the row and its
        path, so the rule that picks the path must not depend on what else is in the forward: without
        ``bulk`` (bulk_rows) it is the rows whose logits are not returned, i.e. a prompt's rows but its last, which
        solo and batched runs, any prompt chunking and any speculation agree on; a caller recomputing rows
        an evicted sequence lost passes the paths they had (session.py, batching.py)."""
        cfg = self.cfg
        n = ids.shape[0]
        if n and (ids.min() < 0 or ids.max() >= cfg.n_vocab):
            raise InputError(f"token ids must be in [0, {cfg.n_vocab}), got {int(ids.min())}..{int(ids.max())}")
        H, KV, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        x = np.empty((n, cfg.d_model), np.float32)  # (rows, d_model) residual stream
        dequant.embed_rows(self.embed.rows(ids), self.embed.ggml_type, np.arange(n, dtype=np.int32), x,
                           F16_TO_F32)
        if cfg.gemma:
            x *= np.sqrt(np.float32(cfg.d_model))
        at = positions if tree is None else tree.path_positions  # where RoPE puts each row
        rope = self._rope.at(at)
        rope_local = self._rope_local.at(at) if cfg.window else rope
        h = np.empty_like(x)
        q = np.empty((n, H, hd), np.float32)
        k = np.empty((n, KV, hd), np.float32)
        v = np.empty((n, KV, hd), np.float32)
        att = np.empty((n, H, hd), np.float32)
        if bulk is None:
            bulk = None if tree is not None else self.bulk_rows(n, logit_rows)
        elif not (self._products.bulk_path and bulk.any()):
            bulk = None
        act = np.empty((min(n, FFN_ROWS if bulk is None else self._ffn_rows_bulk()), cfg.d_ff), np.float32)
        scale = cfg.attn_scale or 1.0 / np.sqrt(hd)
        rows = ops.for_rows(n)  # a prompt's rows spread over the threads, a decode step's stay on this one
        rows.rmsnorm(x, self.layers[0].attn_norm, cfg.eps, h)
        for li, layer in enumerate(self.layers):
            local = cfg.window > 0 and cfg.local_layers[li]
            cos, sin = rope_local if local else rope
            qkv = self._mm(layer.wqkv, h, "qkv", bulk)  # (rows, (H + 2 KV) * hd)
            nxt = self.layers[li + 1].attn_norm if li + 1 < len(self.layers) else self.out_norm
            if cfg.gemma:
                rows.split_qkv_normed(qkv, layer.q_norm, layer.k_norm, cfg.eps, cos, sin, q, k, v)
                del qkv  # not held through the FFN: a prompt block's peak is there
                kv.write(li, seq_ids, positions, k, v)
                kv.attend(li, seq_ids, positions, q, scale, att, window=cfg.window if local else 0, tree=tree)
                rows.add_normed(x, self._mm(layer.wo, att.reshape(n, H * hd), "o", bulk), layer.post_attn_norm,
                                layer.ffn_norm, cfg.eps, h)
                self._ffn(layer, x, h, act, nxt, bulk)
                continue
            rows.split_qkv(qkv, layer.bqkv, cos, sin, cfg.rope_neox, q, k, v)
            del qkv
            kv.write(li, seq_ids, positions, k, v)
            kv.attend(li, seq_ids, positions, q, scale, att, tree=tree)
            rows.add_rmsnorm(x, self._mm(layer.wo, att.reshape(n, H * hd), "o", bulk), layer.ffn_norm, cfg.eps,
                             h)
            self._ffn(layer, x, h, act, nxt, bulk)
        # h holds the final norm of every row; only the rows whose logits are wanted go through the output
        if len(logit_rows) == 0:  # a prompt block before the last: its K/V are all it leaves
            return np.empty((0, cfg.n_vocab), np.float32)
        logits = self._mm(self.output, np.ascontiguousarray(h[logit_rows]), "output")
        if cfg.softcap:
            cap = np.float32(cfg.softcap)
            np.tanh(logits / cap, out=logits)
            logits *= cap
        return logits
