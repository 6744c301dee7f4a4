"""Offline (session 11, lvl11): which (activation row, 32-value block) pairs need the second int8 level?  Each product's input
x is replaced, on the blocks a rule drops, by its level-1 value d1 q1 (exactly what the kernel would use
without level 2; the kernel's own two-level quantization of it gives q2 = 0 there), then the forward's
logits are compared with the tests' float64 forward (KL, as scripts/levels_f64.py).  Also counted: the
share of level-2 block work kept, weighted by each matrix's output rows (the work it costs).

    python level2_rules.py MODEL TOKENS --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

QK = 32


def level1(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d1 (n, nb), d1 q1 (n, cols)) in quantize_rows's f32 arithmetic."""
    xb = x.reshape(x.shape[0], -1, QK)
    amax = np.abs(xb).max(-1)
    d1 = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, 0).astype(np.float32)
    q1 = np.rint(xb * inv[..., None])
    return d1, (q1 * d1[..., None]).astype(np.float32).reshape(x.shape)


def keep_frac(d1: np.ndarray, f: float) -> np.ndarray:
    """Level 2 where a block's step is at least f times the row's largest."""
    return d1 >= f * d1.max(-1, keepdims=True)


def _drop_smallest(cost: np.ndarray, budget: np.ndarray) -> np.ndarray:
    """Keep mask: per row, the blocks of smallest ``cost`` are dropped while their sum stays within ``budget``."""
    order = np.argsort(cost, -1)
    drop_sorted = np.cumsum(np.take_along_axis(cost, order, -1), -1) <= budget
    keep = np.ones(cost.shape, bool)
    np.put_along_axis(keep, order, ~drop_sorted, -1)
    return keep


def keep_energy(d1: np.ndarray, e: float) -> np.ndarray:
    """Drop the smallest-step blocks while their d1^2 sum stays within e of the row's."""
    e2 = d1.astype(np.float64) ** 2
    return _drop_smallest(e2, e * e2.sum(-1, keepdims=True))


def keep_signal(d1: np.ndarray, x: np.ndarray, e: float) -> np.ndarray:
    """Drop smallest-step blocks while their residual energy (32 d1^2 / 12 each) is within e of |x|^2."""
    return _drop_smallest(d1.astype(np.float64) ** 2 * (QK / 12),
                          e * (x.astype(np.float64) ** 2).sum(-1, keepdims=True))


def keep_weighted(d1: np.ndarray, wb: np.ndarray, e: float) -> np.ndarray:
    """keep_energy with each block's d1^2 weighted by its weight columns' energy |W[:, block]|^2 (static per
    matrix): the output error a dropped block adds, if the residuals are independent."""
    e2 = d1.astype(np.float64) ** 2 * wb[None, :]
    return _drop_smallest(e2, e * e2.sum(-1, keepdims=True))


WEIGHTS = {"wb": None}  # the current matrix's column-block energies, set by the product hook

RULES = {"two": None, "one": lambda d1, x: np.zeros_like(d1, bool)}
for f in (0.5, 0.25, 0.125, 0.0625):
    RULES[f"frac{f}"] = lambda d1, x, f=f: keep_frac(d1, f)
for e in (3e-2, 1e-2, 3e-3, 1e-3):
    RULES[f"energy{e}"] = lambda d1, x, e=e: keep_energy(d1, e)
for e in (3e-2, 1e-2, 3e-3):
    RULES[f"wenergy{e}"] = lambda d1, x, e=e: keep_weighted(d1, WEIGHTS["wb"], e)
for e in (1e-3, 3e-4, 1e-4, 3e-5):
    RULES[f"signal{e}"] = lambda d1, x, e=e: keep_signal(d1, x, e)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("tokens", type=int)
    ap.add_argument("--rules", nargs="*", default=list(RULES),
                    help="a rule's name, or name@role+role: that rule on those roles only (qkv o gate_up down output)")
    ap.add_argument("--json")
    args = ap.parse_args()
    from corert.models.store import ModelStore
    from corert.engines.native import products
    from test_native_engine import _kld, _load, reference_logits, TEXT

    state = {"rule": "two", "kept": 0.0, "all": 0.0, "role": None}
    orig_for = products.I8Products.for_matrix

    def for_matrix(self, role):
        state["role"] = role
        return orig_for(self, role)
    products.I8Products.for_matrix = for_matrix

    col_energy = {}

    def column_energy(self, orig, parts, cols, rows):
        """|W[:, block]|^2 per 32-column block, from the product itself on identity rows (exact: one-hot rows
        quantize without error)."""
        wb = np.zeros(cols // QK)
        for c0 in range(0, cols, 512):
            eye = np.zeros((min(512, cols - c0), cols), np.float32)
            eye[np.arange(eye.shape[0]), c0 + np.arange(eye.shape[0])] = 1
            wt = np.empty((eye.shape[0], rows), np.float32)
            orig(self, parts, eye, wt)
            e = (wt.astype(np.float64) ** 2).sum(-1)
            np.add.at(wb, (c0 + np.arange(eye.shape[0])) // QK, e)
        return wb

    def wrap(name):
        orig = getattr(products.I8Products, name)

        def method(self, parts, x, out):
            name, _, roles = state["rule"].partition("@")
            rule = RULES[name]
            if roles and state["role"] not in roles.split("+"):
                rule = None
            if state["role"] == "output":  # a prompt computes one row of logits: its work is not counted
                rule = rule
            elif rule is None:
                state["kept"] += x.shape[0] * x.shape[1] // QK * out.shape[1]
                state["all"] += x.shape[0] * x.shape[1] // QK * out.shape[1]
            if rule is not None and name.startswith("wenergy"):
                key = id(parts[0])
                if key not in col_energy:
                    col_energy[key] = column_energy(self, orig, parts, x.shape[1], out.shape[1])
                WEIGHTS["wb"] = col_energy[key]
            if rule is not None:
                d1, x1 = level1(x)
                keep = rule(d1, x)
                x = np.where(np.repeat(keep, QK, -1), x, x1).astype(np.float32)
                if state["role"] != "output":
                    state["kept"] += keep.sum() * out.shape[1]
                    state["all"] += keep.size * out.shape[1]
            return orig(self, parts, x, out)
        setattr(products.I8Products, name, method)

    for n in ("q8", "q6", "q4"):
        wrap(n)
    path = str(ModelStore().resolve(args.model))
    result = {"model": args.model, "tokens": args.tokens, "text": "license-apache2.txt", "kv": "f32", "rules": {}}
    m = _load(path, variant="vnni", n_ctx=max(64, args.tokens))
    try:
        ids = m.tokenizer.encode(TEXT)[:args.tokens]
        ref = reference_logits(path, ids)
        for r in args.rules:
            if r.partition("@")[0] not in RULES:
                raise SystemExit(f"unknown rule {r}")
            state.update(rule=r, kept=0.0, all=0.0)
            s = m.session()
            s.truncate(0)
            got = s.eval(ids, all_logits=True)
            k = _kld(ref, got)
            kept = state["kept"] / state["all"] if state["all"] else 1.0
            result["rules"][r] = {"level2_kept": kept, "kl_mean": float(k.mean()), "kl_max": float(k.max()),
                                  "top1_vs_f64": float((got.argmax(-1) == ref.argmax(-1)).mean())}
            print(args.model, r, result["rules"][r], flush=True)
    finally:
        m.close()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
