"""KL to float64 (scripts/levels_f64.py's measure) of amx-bf16 with the term count set per matrix role: a
variant "amx-bf16@role=TERMS,role=TERMS" (roles: qkv o gate_up down output; TERMS matmul_bf16.TERMS), the
other roles keeping the default; levels_f64.py's arguments otherwise.
Usage: kl_roles.py MODEL TOKENS amx-bf16@gate_up=2x amx-bf16@down=2x ... --kv f16 --bulk --json OUT"""
import sys
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import levels_f64  # noqa: E402
from corert.engines.native import matmul_bf16, products  # noqa: E402

_bind, _load_terms = products.I8Products.bind, levels_f64._load_terms
OVERRIDE: dict[str, int] = {}


def bind(self, kind, parts, cols, role, bulk=False):
    if role in OVERRIDE:
        self = attrs.evolve(self, bf16_split=OVERRIDE[role])
    return _bind(self, kind, parts, cols, role, bulk)


def load_roles(load, path, name, **kw):
    variant, _, spec = name.partition("@")
    OVERRIDE.clear()
    OVERRIDE.update({r: matmul_bf16.TERMS[t] for r, t in (p.split("=") for p in spec.split(",") if p)})
    return _load_terms(load, path, variant, **kw)


products.I8Products.bind = bind
levels_f64._load_terms = load_roles

if __name__ == "__main__":
    levels_f64.main()
