"""The PNG of ``corert bench serve --plot``: aggregate tok/s and TTFT p95 against the number of clients,
one line per side (matplotlib, the optional ``plots`` extra)."""
from __future__ import annotations

from typing import Any

from corert.errors import ConfigError


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError("a plot needs matplotlib, an optional extra: pip install 'corert[plots]'") from None


def draw(result: dict[str, Any], path: str) -> None:
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (tok_ax, ttft_ax) = plt.subplots(1, 2, figsize=(10, 4))
    sides = list(result["rows"][0]["sides"]) if result["rows"] else []
    for side in sides:
        xs = [row["clients"] for row in result["rows"]]
        tok_ax.plot(xs, [row["sides"][side]["tok_s"] for row in result["rows"]], marker="o", label=side)
        ttft_ax.plot(xs, [row["sides"][side]["ttft_p95_ms"] for row in result["rows"]], marker="o", label=side)
    tok_ax.set(xlabel="concurrent clients", ylabel="aggregate tok/s (median)", title="throughput")
    ttft_ax.set(xlabel="concurrent clients", ylabel="TTFT p95 (ms)", title="time to first token", yscale="log")
    for ax in (tok_ax, ttft_ax):
        ax.set_xticks(result["clients"])
        ax.grid(alpha=0.3)
    tok_ax.legend(fontsize=8)
    fig.suptitle(f"corert bench serve: {result['model']}, {result['max_tokens']} tokens per stream, "
                 f"{result['threads']} threads", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
