"""``corert bench batch --speculative``: speculation inside continuous batching on the native engine.

N streams (8 by default) of grounded prompts, greedy, exactly --max-tokens tokens each (end-of-generation
ignored, so every side does the same work), three sides per round in a rotating order:
  spec    all N streams in one BatchRunner, each drafting from its own prompt/output lookup
          (speculative:adaptive: depths chosen per step with the batch's rows; the decoder, and what it
          learned, is kept across rounds as the Runtime keeps it across requests)
  plain   the same batch decoded plainly
  llama   llama-cpp-python (same model, same threads) serving them one after another
Aggregate decode tok/s as in ``bench batch`` (tokens after each stream's first / time from the moment every
stream has its first token); the ratios spec/plain and spec/llama per round, median and min-max.  Every
spec stream is checked against its solo plain run (one BatchRunner stream alone), in every round, and its
drafted and accepted tokens are reported, as is the batch's step-cost line against the step times measured.
The lookup bound says how far any depth rule could go with these drafts: the solo outputs replayed with
every offer drafted exactly as far as it holds (plugins/speculative/lookup_bound.py), the steps priced by
forwards timed here (step_curve.py).

The prompts and the model are chosen so that speculation has something to copy: eight distinct edits whose
answer repeats most of the prompt (code annotated, renamed, fixed, typed or stripped of comments; a paragraph
spell-checked or listed; corert.tools.prompts.GROUNDED + GROUNDED_MORE), on Qwen2.5-Coder 0.5B Instruct by
default, which returns such code verbatim around its edits (SmolLM2 paraphrases it: 51 of 155 drafts
accepted), and is small enough for three sides x three rounds of 8 x 128 tokens on two cores (the 1.5B of
the same family copies as well, at three times the time: pass --model to use it).
"""
from __future__ import annotations

from typing import Any

from corert.compute import on_compute_thread
from corert.models.labels import model_label
from corert.tools.stats import median, ratio_summary, ratios, spread

from .batch import _native, _run_batched, _run_llama

#: the issue's goal: adaptive speculation in the batch against the same batch decoded plainly
GOAL_VS_PLAIN = 1.3
N_CTX = 1024
#: the registry model the bench runs without --model (see the module docstring)
DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"


def grounded_ids(model, path: str, n: int, limit: int) -> list[list[int]]:
    """The bench's n prompts (the grounded ones in turn) in the model's chat template, as token ids cut at
    ``limit`` (scripts/profile_batch.py --grounded profiles the same ones)."""
    from corert.chat import render
    from corert.models.gguf_header import read_header
    from corert.tools.prompts import GROUNDED, GROUNDED_MORE

    template = read_header(path, want_arrays=False).metadata.get("tokenizer.chat_template")
    prompts = GROUNDED + GROUNDED_MORE
    texts = [render(template, [{"role": "user", "content": prompts[i % len(prompts)]}]) for i in range(n)]
    return [model.tokenizer.encode(t, parse_special=True)[:limit] for t in texts]


def run(args, rt, counts: list[int]) -> dict[str, Any]:
    from corert.engines.native.batching import BatchRunner
    from corert.tools.prompts import GROUNDED, GROUNDED_MORE

    from . import step_curve
    from .raw_llama import raw_llama

    n = counts[-1]
    path = str(rt.model_path())
    threads = rt.scheduler.thread_budget().numba_threads
    model = _native(rt, path, n, N_CTX)
    spec = rt.decoder().batch_speculation
    if spec is None:
        from corert.errors import InputError
        raise InputError("--speculative needs speculative=speculative:adaptive or speculative:lookup (a decoder "
                         "that drafts by lookup)")
    prompts = GROUNDED + GROUNDED_MORE
    ids = grounded_ids(model, path, n, N_CTX - args.max_tokens - 1)
    llm = raw_llama(path, N_CTX, threads, rt.config.llama.flash_attn)  # as corert's llama.cpp engine
    try:
        runner = lambda: BatchRunner(model, share_prefixes=False)  # noqa: E731  (no side reuses a prompt)
        solo = [_run_batched(runner(), [x], args.max_tokens)["outputs"][0] for x in ids]
        _run_batched(runner(), ids[:2], 8, spec)  # warm-up: kernels hot, the controller's first timings
        on_compute_thread(_run_llama, llm, ids[:1], 4)
        sides = {"spec": lambda: _run_batched(runner(), ids, args.max_tokens, spec),
                 "plain": lambda: _run_batched(runner(), ids, args.max_tokens),
                 "llama": lambda: on_compute_thread(_run_llama, llm, ids, args.max_tokens)}
        names = list(sides)
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in names}
        for k in range(args.rounds):  # the order rotates: load drift falls on every side alike
            for side in names[k % 3:] + names[:k % 3]:
                runs[side].append(sides[side]())
        curve = step_curve.measure(model, ids)  # what the lookup bound's steps cost (step_curve.py)
    finally:
        model.close()
        del llm
    identical = all(r["outputs"] == solo for side in ("spec", "plain") for r in runs[side])
    row: dict[str, Any] = {"streams": n}
    for side, rs in runs.items():
        row[side] = {k: median([r[k] for r in rs]) for k in ("decode_tok_s", "e2e_tok_s", "seconds")}
        row[side]["decode_tok_s_range"] = spread([r["decode_tok_s"] for r in rs])
        if side != "llama":
            row[side]["steps"] = rs[-1]["steps"]
    last = runs["spec"][-1]
    row["spec"].update(drafted=last["drafted"], accepted=last["accepted"])
    row["spec"]["per_stream"] = [{"prompt": i % len(prompts), "drafted": d, "accepted": a,
                                  "accepted_share": a / d if d else None}
                                 for i, (d, a) in enumerate(last["per_stream"])]
    # what speculation costs beside the forwards, per step of the last round (lookup + depth choice, rollback)
    row["spec"].update(draft_ms_per_step=1000 * last["draft_seconds"] / last["steps"],
                       rollback_ms_per_step=1000 * last["rollback_seconds"] / last["steps"],
                       step_ms=1000 * last["seconds"] / last["steps"])
    fit = spec.cost.fit()
    # every draft accepted, as deep as wanted: no draft rule gets past this ratio (the controller declines
    # every draft below 1)
    ceiling = fit.ceiling(n)
    row["spec"]["step_cost"] = {"fixed_s": fit.fixed, "per_row_s": fit.per_row, "knee_rows": fit.knee,
                                "per_row_above_knee_s": fit.per_row_above, "measured": spec.cost.table(),
                                "ceiling_vs_plain": ceiling}
    # every offer drafted exactly as far as it holds, on these streams' own outputs: no depth rule gets past
    # this with lookup drafts (the steps count too: the batch runs until its least copyable stream ends),
    # priced by forwards timed here rather than by the fitted line (no support beyond the rows it drafted)
    bound = spec.lookup_bound(ids, solo, step_curve.interpolate(curve))
    row["spec"]["lookup_bound"] = {"vs_plain": bound.vs_plain, "steps": bound.steps, "plain_steps": bound.plain_steps,
                                   "stream_steps": list(bound.stream_steps),
                                   "step_curve": [{"rows": r, "seconds": t} for r, t in curve]}
    for other in ("plain", "llama"):
        for k in ("decode", "e2e"):
            s = ratio_summary(ratios([r[f"{k}_tok_s"] for r in runs["spec"]], [r[f"{k}_tok_s"] for r in runs[other]]))
            row.update({f"{k}_vs_{other}": s["median"], f"{k}_vs_{other}_range": s["range"],
                        f"{k}_vs_{other}_rounds": s["rounds"]})
    return {"bench": "batch --speculative", "model": model_label(path), "engine": rt.config.engine, "threads": threads,
            "max_tokens": args.max_tokens, "rounds": args.rounds, "kv_cache": rt.resolve("kv_cache", "native").label,
            "speculative": rt.resolve("speculative", "native").label, "prompts": "grounded", "row": row,
            "streams_identical_to_solo_plain": identical,
            f"goal_{GOAL_VS_PLAIN}x_vs_plain_batch": row["decode_vs_plain"] >= GOAL_VS_PLAIN}


def render(r: dict[str, Any]) -> str:
    row = r["row"]
    cell = lambda k: (f"{row[k]:.2f}x ({row[k + '_range'][0]:.2f}-{row[k + '_range'][1]:.2f})")  # noqa: E731
    lines = [f"speculation in continuous batching: {r['model']}, {row['streams']} grounded streams x "
             f"{r['max_tokens']} tokens, {r['threads']} threads, kv_cache={r['kv_cache']}, {r['speculative']}, "
             f"{r['rounds']} rounds, sides interleaved; machine: {r['machine']['cpu']} ({r['machine']['cores']} cores)",
             f"  decode tok/s (aggregate, medians): spec {row['spec']['decode_tok_s']:.1f} "
             f"(steps {row['spec']['steps']}, drafted {row['spec']['drafted']}, accepted {row['spec']['accepted']}), "
             f"plain batch {row['plain']['decode_tok_s']:.1f} (steps {row['plain']['steps']}), "
             f"llama.cpp one after another {row['llama']['decode_tok_s']:.1f}",
             f"  spec vs plain batch: decode {cell('decode_vs_plain')}, e2e {cell('e2e_vs_plain')}",
             f"  spec vs llama.cpp:   decode {cell('decode_vs_llama')}, e2e {cell('e2e_vs_llama')}",
             "  accepted/drafted per stream (last round): " + ", ".join(
                 f"{p['accepted']}/{p['drafted']}" for p in row["spec"]["per_stream"]),
             f"  per step: {row['spec']['step_ms']:.0f} ms in all, of which drafting "
             f"{row['spec']['draft_ms_per_step']:.2f} ms and rollback {row['spec']['rollback_ms_per_step']:.3f} ms",
             f"  step cost fitted: {_fit_text(row['spec']['step_cost'])}; measured (rows: ms): " + ", ".join(
                 f"{m['rows']}: {1000 * m['seconds']:.0f}" for m in row["spec"]["step_cost"]["measured"][:12]),
             f"  ceiling at these step costs (every draft accepted): {row['spec']['step_cost']['ceiling_vs_plain']:.2f}x "
             f"the plain batch",
             f"  lookup drafting each offer exactly as far as it holds (timed forwards): "
             f"{_bound_text(row['spec']['lookup_bound'])}",
             f"  every stream identical to its solo plain run: {r['streams_identical_to_solo_plain']}",
             f"  goal >= {GOAL_VS_PLAIN}x the plain batch: "
             f"{'met' if r[f'goal_{GOAL_VS_PLAIN}x_vs_plain_batch'] else 'NOT met'}  (shared machine: noisy)"]
    return "\n".join(lines)


def _bound_text(b: dict[str, Any]) -> str:
    return (f"{b['vs_plain']:.2f}x in {b['steps']} steps against {b['plain_steps']} (steps per stream: "
            + ", ".join(map(str, b["stream_steps"])) + ")")


def _fit_text(c: dict[str, Any]) -> str:
    text = f"{1000 * c['fixed_s']:.1f} ms + {1000 * c['per_row_s']:.2f} ms per row"
    if c["knee_rows"]:
        text += f", + {1000 * c['per_row_above_knee_s']:.2f} ms per row beyond {c['knee_rows']}"
    return text
