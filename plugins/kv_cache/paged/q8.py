"""How q8 pages code keys and values so that int8 blocks lose little, and how attention undoes it exactly.

int8 with one scale per 32 values is only as good as a block's largest value allows.  Three exact changes of
basis make the blocks even (measured on SmolLM2-135M / Qwen2.5-0.5B attention, README):

* keys are centred and weighted per channel: k -> w * (k - mu), queries q -> q / w.  q . mu is the same for
  every position of a query, which softmax ignores.  w = sqrt(rms(q) / rms(k - mu)) per (KV head, channel)
  minimizes the score error of independent per-value rounding (SmoothQuant's balance: loud key channels are
  squeezed, channels the queries weigh heavily get more of the int8 range);
* keys and values are rotated by a normalized Walsh-Hadamard transform H (rows of 64 values): q . k =
  Hq . Hk, and sum_t p_t H v_t = H sum_t p_t v_t, so the store keeps H k, H v, rotates each query once and
  rotates the attention output back.  Rotation spreads the remaining outlier channels over the block;
* position 0 (the attention sink, which most queries weigh heavily) is stored relative to the key the
  calibration text had there, w * (k0 - sink), which is nearly the same vector in every sequence past the
  first layers, so its rounding error is tiny; the kernels add q'' . H(w * (sink - mu)) to its score.

mu, w and sink are per (layer, KV head) and fixed once by :class:`Calibration` on the engine's calibration
text, so no sequence's output depends on what ran before it.  Before that (or when a layer saw too few
rows) they are the identity: mu = 0, w = 1, sink = 0, rotation only.

The hot path codes inside the kernels (writes.write_q8 for keys and values, the q8 attention kernels for
queries and outputs); :class:`Q8Coding`'s ``keys`` / ``values`` / ``queries`` / ``outputs`` are the same
steps in numpy, the reference the tests hold the kernels to.
"""
from __future__ import annotations

import attrs
import numpy as np

from .rotation import rotate, rotation_block

#: Rows (past position 0) of keys and of queries each layer's calibration uses at most.
CAL_ROWS = 256
#: Fewer rows than this leave a layer uncalibrated (rotation only).
MIN_CAL_ROWS = 16


@attrs.define
class Q8Coding:
    """Per-layer basis of q8 pages: mu, w, sink (n_layers, n_kv_heads, head_dim) f32."""

    n_layers: int
    n_kv_heads: int
    head_dim: int
    mu: np.ndarray = attrs.field(init=False)
    w: np.ndarray = attrs.field(init=False)
    sink_key: np.ndarray = attrs.field(init=False)  # the reference position 0's key is stored against
    sink: np.ndarray = attrs.field(init=False)  # H(w * (sink_key - mu)): what the kernels add back
    block: int = attrs.field(init=False)  # values one rotation mixes
    calibrated: bool = False

    def __attrs_post_init__(self) -> None:
        shape = (self.n_layers, self.n_kv_heads, self.head_dim)
        self.mu, self.sink_key, self.sink = (np.zeros(shape, np.float32) for _ in range(3))
        self.w = np.ones(shape, np.float32)
        self.block = rotation_block(self.head_dim)

    # -- numpy reference of the kernels' coding ----------------------------------------------------------
    def keys(self, layer: int, positions: np.ndarray, k: np.ndarray) -> np.ndarray:
        """(rows, kv_heads, hd) keys -> what is quantized: H(w * (k - mu)), position 0 against sink_key."""
        first = (np.asarray(positions) == 0)[:, None, None]
        base = np.where(first, self.sink_key[layer], self.mu[layer])
        x = np.ascontiguousarray((k - base) * self.w[layer], np.float32)
        rotate(x, self.block)
        return x

    def values(self, v: np.ndarray) -> np.ndarray:
        x = np.array(v, np.float32, order="C")
        rotate(x, self.block)
        return x

    def queries(self, layer: int, q: np.ndarray) -> np.ndarray:
        """(rows, heads, hd) queries -> H(q / w) (query head h reads KV head h // group)."""
        group = q.shape[1] // self.n_kv_heads
        x = np.ascontiguousarray(q / np.repeat(self.w[layer], group, axis=0), np.float32)
        rotate(x, self.block)
        return x

    def outputs(self, out: np.ndarray) -> None:
        """The kernels' outputs, in the rotated value basis, back in place (H is its own inverse)."""
        rotate(out, self.block)

    def set(self, layer: int, mu: np.ndarray, w: np.ndarray, sink_key: np.ndarray) -> None:
        self.mu[layer], self.w[layer], self.sink_key[layer] = mu, w, sink_key
        d = np.ascontiguousarray(((sink_key - mu) * w)[None], np.float32)
        rotate(d, self.block)
        self.sink[layer] = d[0]


@attrs.define
class Calibration:
    """Collects the first CAL_ROWS key and query rows past position 0 of each layer, and position 0's key,
    then fixes a :class:`Q8Coding` from them."""

    coding: Q8Coding
    keys: list[list[np.ndarray]] = attrs.field(init=False)
    queries: list[list[np.ndarray]] = attrs.field(init=False)
    first: list[np.ndarray | None] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        n = self.coding.n_layers
        self.keys, self.queries, self.first = [[] for _ in range(n)], [[] for _ in range(n)], [None] * n

    def add_keys(self, layer: int, positions: np.ndarray, k: np.ndarray) -> None:
        pos = np.asarray(positions)
        if self.first[layer] is None and (pos == 0).any():
            self.first[layer] = np.array(k[np.argmax(pos == 0)], np.float32)
        _take(self.keys[layer], k[pos > 0])

    def add_queries(self, layer: int, positions: np.ndarray, q: np.ndarray) -> None:
        _take(self.queries[layer], q[np.asarray(positions) > 0])

    def finish(self) -> int:
        """Set the coding of every layer with enough rows; returns how many layers were calibrated."""
        c, done = self.coding, 0
        for layer in range(c.n_layers):
            if not self.keys[layer] or not self.queries[layer]:
                continue
            k = np.concatenate(self.keys[layer]).astype(np.float64)  # (rows, kv, hd)
            q = np.concatenate(self.queries[layer]).astype(np.float64)  # (rows, heads, hd)
            if min(len(k), len(q)) < MIN_CAL_ROWS:
                continue
            mu = k.mean(axis=0)
            rk = np.sqrt(((k - mu) ** 2).mean(axis=0))
            rq = np.sqrt((q.reshape(len(q), c.n_kv_heads, -1, c.head_dim) ** 2).mean(axis=(0, 2)))
            rk = np.maximum(rk, 1e-3 * rk.max(axis=-1, keepdims=True) + 1e-12)  # dead channels: no blow-up
            rq = np.maximum(rq, 1e-3 * rq.max(axis=-1, keepdims=True) + 1e-12)
            w = np.sqrt(rq / rk)
            w /= np.exp(np.log(w).mean(axis=-1, keepdims=True))  # only ratios matter: keep values near 1
            sink = self.first[layer] if self.first[layer] is not None else mu
            c.set(layer, mu.astype(np.float32), w.astype(np.float32), np.asarray(sink, np.float32))
            done += 1
        c.calibrated = True
        return done


def _take(buf: list[np.ndarray], rows: np.ndarray) -> None:
    have = sum(len(b) for b in buf)
    if have < CAL_ROWS and len(rows):
        buf.append(np.array(rows[:CAL_ROWS - have], np.float32))
