"""In-process A/B of matmul_bf16 variants (k15): each variant is a copy of a matmul_bf16.py source (``main``:
git show main:core/engines/native/matmul_bf16.py; ``tree``: this tree's) with text substitutions, imported as
its own module of corert.engines.native, all timed interleaved in one process on the same random matrices
(the VM's process-to-process drift cancels).  Checks every variant's output bits against the first's.

    ab_k15.py --variants main tree 'tree6:tree:B_SUB_BLOCKS = 8=>B_SUB_BLOCKS = 6' \
        --cases q4:17920:1536:459 q6p:1536:8960:459 q8:4096:640:454 --reps 15 --json out.jsonl
A variant spec is NAME:SOURCE[:OLD=>NEW[;;OLD=>NEW...]]."""
import argparse, importlib.util, json, os, subprocess, sys, time
import numpy as np
import corert.engines.native as native_pkg
from corert.engines.native import matmul_i8

HERE = os.path.dirname(os.path.abspath(__file__))
TREE = os.path.abspath(os.path.join(HERE, "..", ".."))
SRC = "core/engines/native/matmul_bf16.py"


def load_variant(spec, vdir):
    name, *rest = spec.split(":", 2)
    source, rest = (rest[0], rest[1:]) if rest else (name, [])
    text = subprocess.check_output(["git", "-C", TREE, "show", f"{source}:{SRC}"], text=True) \
        if source != "tree" else open(os.path.join(TREE, SRC)).read()
    for sub in (rest[0].split(";;") if rest else []):
        old, new = sub.split("=>")
        assert old in text, f"{name}: {old!r} not in the source"
        text = text.replace(old, new)
    path = os.path.join(vdir, f"_ab_{name}.py")
    if not (os.path.exists(path) and open(path).read() == text):  # numba's cache keys on the file's mtime
        open(path, "w").write(text)
    modname = f"corert.engines.native._ab_{name}"
    spec_ = importlib.util.spec_from_file_location(modname, path)
    mod = importlib.util.module_from_spec(spec_)
    sys.modules[modname] = mod
    spec_.loader.exec_module(mod)
    return name, mod


def case(kind, rows, cols, rng):
    if kind == "q4":
        nib = rng.integers(0, 256, (rows, cols // 2)).astype(np.uint8)
        sc = rng.uniform(0.01, 0.1, (rows, cols // 32)).astype(np.float32)
        of = rng.uniform(-0.1, 0.1, (rows, cols // 32)).astype(np.float32)
        q, d, m = matmul_i8.layout_q4(nib, sc, of)
        return lambda mod, x, o, t: mod.q4_product(q, d, m, x, o, t, True)
    if kind in ("q6", "q6p"):
        qi = rng.integers(-32, 32, (rows, cols)).astype(np.int8)
        if kind == "q6":
            qi[0, 0] = -100  # not packable: the q8-like layout
        sub = rng.integers(-128, 128, (rows, cols // 16)).astype(np.int8)
        sup = rng.uniform(1e-3, 1e-2, (rows, cols // 256)).astype(np.float32)
        q, d, s = matmul_i8.layout_q6(qi, sub, sup)
        assert matmul_i8.is_packed_q6(q, cols) == (kind == "q6p")
        f = "q6_packed_product" if kind == "q6p" else "q6_product"
        return lambda mod, x, o, t: getattr(mod, f)(q, d, x, o, s, t, True)
    qi = rng.integers(-128, 128, (rows, cols)).astype(np.int8)
    bits = rng.uniform(0.01, 0.1, (rows, cols // 32)).astype(np.float16).view(np.uint16)
    q, d = matmul_i8.layout_q8(qi, bits, pack=False)
    return lambda mod, x, o, t: mod.q8_product(q, d, x, o, t, True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", nargs="+", required=True)
    ap.add_argument("--cases", nargs="+", required=True, help="KIND:ROWS:COLS:N (KIND q4, q6, q6p, q8)")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    vdir = os.path.join(HERE, "variants")
    os.makedirs(vdir, exist_ok=True)
    mods = dict(load_variant(s, vdir) for s in a.variants)
    rng = np.random.default_rng(0)
    with open(a.json, "a") as fh:
        for c in a.cases:
            kind, rows, cols, n = c.split(":")
            rows, cols, n = int(rows), int(cols), int(n)
            f = case(kind, rows, cols, rng)
            x = rng.standard_normal((n, cols)).astype(np.float32)
            outs = {k: np.empty((n, rows), np.float32) for k in mods}
            for k, m in mods.items():
                f(m, x, outs[k], a.threads)
            first = next(iter(mods))
            same = {k: bool(np.array_equal(outs[k].view(np.uint32), outs[first].view(np.uint32))) for k in mods}
            ts = {k: [] for k in mods}
            for _ in range(a.reps):
                for k, m in mods.items():
                    t0 = time.perf_counter()
                    f(m, x, outs[k], a.threads)
                    ts[k].append(time.perf_counter() - t0)
            r = {"case": c, "kind": kind, "rows": rows, "cols": cols, "n": n, "threads": a.threads,
                 "variants": a.variants, "same_bits_as_first": same,
                 **{f"{k}_median_ms": float(np.median(v)) * 1e3 for k, v in ts.items()},
                 **{f"{k}_min_ms": float(np.min(v)) * 1e3 for k, v in ts.items()},
                 **{f"{k}_gops": 2 * n * rows * cols / float(np.median(v)) / 1e9 for k, v in ts.items()},
                 # each rep's time over the first variant's in the same rep: drift between reps cancels
                 **{f"{k}_ratio": float(np.median(np.array(v) / np.array(ts[first]))) for k, v in ts.items()}}
            print(json.dumps(r), flush=True)
            fh.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
