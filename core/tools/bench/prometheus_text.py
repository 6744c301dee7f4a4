"""Reading a Prometheus text exposition (GET /metrics) into numbers: what the soak needs, no more."""
from __future__ import annotations

import re

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def samples(text: str) -> dict[str, float]:
    """Every sample's value summed over its labels, by metric name (``corert_kv_sequences`` summed over
    the loaded models).  Comment lines and unparsable values are skipped."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        out[m.group(1)] = out.get(m.group(1), 0.0) + value
    return out
