"""``corert bench tokenize``: single-thread encode throughput of the bpe tokenizer (every variant this CPU
runs) against Hugging Face ``tokenizers`` built from the same vocabulary and merges and against llama.cpp's
own tokenizer, on the same corpus in one process run; plus the time per byte of 'a' * N (linear time)."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from corert.tools.stats import MIN_ROUNDS, format_ratio, ratio_summary, ratios

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"
LINEAR_SIZES = (10_000, 100_000, 1_000_000)

# The pre-tokenizer regexes of the Hugging Face tokenizer.json files these GGUF vocabularies come from.
_HF_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
             r"\s*[\r\n]+|\s+(?!\S)|\s+")


def add_arguments(parser) -> None:
    parser.add_argument("--corpus", default=None,
                        help="folder of text files (default: the corpus shipped with corert, $CORERT_CORPUS overrides)")
    parser.add_argument("--repeat", type=int, default=MIN_ROUNDS,
                        help=f"passes over the corpus, every tokenizer in turn in each, at least {MIN_ROUNDS}; "
                             f"a row shows its best pass, the ratio the median of the passes' ratios")
    parser.add_argument("--no-linear", action="store_true", help="skip the 'a' * N timing")


def _corpus(folder: str | None) -> tuple[str, list[tuple[str, str]]]:
    """(what the result calls the corpus, [(file name, text)]): the given folder or the packaged corpus."""
    from corert.tools.corpus import corpus_files
    from corert.errors import InputError

    folder = folder or os.environ.get("CORERT_CORPUS")
    try:
        files = corpus_files(folder)
    except OSError as exc:
        raise InputError(f"cannot read the corpus folder {folder}: {exc.strerror}") from None
    if not files:
        raise InputError(f"no corpus files in {folder}")
    # the folder's name, not its path: results are compared across machines
    label = Path(folder).name if folder else "corert text-corpus"
    return label, [(p.name, p.read_text(encoding="utf-8", errors="replace")) for p in files]


def _passes(encoders: dict[str, Callable[[str], list[int]]], texts: list[str], n_bytes: int, repeat: int
            ) -> tuple[dict[str, list[float]], dict[str, list[list[int]]]]:
    """MB/s of every pass of every encoder, the encoders taking turns within a pass (so a slow spell of the
    shared machine hits one pass of each, not all passes of one), and each encoder's ids."""
    ids = {name: [enc(t) for t in texts] for name, enc in encoders.items()}  # warm-up (JIT, caches)
    mbps: dict[str, list[float]] = {name: [] for name in encoders}
    names = list(encoders)
    for k in range(repeat):
        for name in names[k % len(names):] + names[:k % len(names)]:  # rotate who goes first
            t0 = time.perf_counter()
            for t in texts:
                encoders[name](t)
            mbps[name].append(n_bytes / (time.perf_counter() - t0) / 1e6)
    return mbps, ids


def hf_tokenizer(vocab):
    """Hugging Face tokenizers with the same byte-level vocabulary, merges and pre-tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    if vocab.is_spm:
        return None
    n = vocab.n_vocab
    texts = [vocab.text(i).decode("utf-8", errors="replace") for i in range(n)]
    to_str = {i: t for i, t in enumerate(texts)}
    hf_vocab = {}
    for i, t in enumerate(texts):
        hf_vocab.setdefault(t, i)
    merges = [(to_str[int(a)], to_str[int(b)]) for a, b in zip(vocab.m_left, vocab.m_right) if a >= 0]
    model = models.BPE(hf_vocab, merges, fuse_unk=False, ignore_merges=False)
    tok = Tokenizer(model)
    if vocab.pre == "qwen2":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_HF_QWEN2), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:  # smollm / starcoder family: single digits, then GPT-2's byte-level regex
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    return tok


def run(args) -> dict[str, Any]:
    from corert.cpu import choose_variant, info, simd_variants
    from corert.errors import InputError
    from corert.models.labels import model_label
    from corert.models.store import ModelStore
    from corert.plugins.tokenizer.bpe import BpeTokenizer
    from corert.plugins.tokenizer.vocab import load_vocab

    model = getattr(args, "model", None) or DEFAULT_MODEL
    path = str(Path(model)) if Path(model).is_file() else str(ModelStore().resolve(model))
    corpus, files = _corpus(getattr(args, "corpus", None))
    texts = [t for _, t in files]
    n_bytes = sum(len(t.encode()) for t in texts)
    repeat = int(getattr(args, "repeat", MIN_ROUNDS) or MIN_ROUNDS)
    if repeat < MIN_ROUNDS:
        raise InputError(f"--repeat must be at least {MIN_ROUNDS}: the ratio's spread needs several passes")
    t0 = time.perf_counter()
    vocab = load_vocab(path)
    load_s = time.perf_counter() - t0
    cpu = info()
    # the variant a user gets without asking is the one the ratio, batch and linear rows use
    default_variant, _ = choose_variant(simd_variants(), None, "tokenizer=bpe")
    encoders: dict[str, Callable[[str], list[int]]] = {}
    for v in simd_variants():
        if v.supported(cpu):
            encoders[f"corert bpe:{v.name}"] = (lambda tok: lambda t: tok.encode(t, add_bos=False))(
                BpeTokenizer(vocab, v.name))
    errors: dict[str, str] = {}
    try:
        hf = hf_tokenizer(vocab)
        if hf is None:
            errors["hf tokenizers"] = "not built for SentencePiece vocabularies"
        else:
            encoders["hf tokenizers"] = lambda t: hf.encode(t, add_special_tokens=False).ids
    except Exception as exc:  # the comparison is optional; say why it is missing
        errors["hf tokenizers"] = f"{type(exc).__name__}: {exc}"
    try:
        import llama_cpp

        llama = llama_cpp.Llama(path, vocab_only=True, verbose=False)
        encoders["llama.cpp tokenize"] = lambda t: llama.tokenize(t.encode(), add_bos=False, special=False)
    except ImportError as exc:
        errors["llama.cpp tokenize"] = str(exc)
    mbps, ids = _passes(encoders, texts, n_bytes, repeat)
    ref_ids = ids[next(iter(encoders))]
    rows: list[dict[str, Any]] = [{"name": name, "mb_per_s": max(mbps[name]), "mb_per_s_passes": mbps[name],
                                   "same_ids": ids[name] == ref_ids} for name in encoders if name.startswith("corert")]
    default = next(r for r in rows if r["name"] == f"corert bpe:{default_variant.name}")
    best = max(rows, key=lambda r: r["mb_per_s"])
    best_tok = BpeTokenizer(vocab, default_variant.name)
    # the same with an empty word cache: one pass of a fresh tokenizer (the rows above reuse words seen
    # in earlier passes, as Hugging Face's BPE cache does)
    fresh = BpeTokenizer(vocab, default_variant.name)
    t0 = time.perf_counter()
    fresh_ids = [fresh.encode(t, add_bos=False) for t in texts]
    fresh_s = time.perf_counter() - t0
    rows.append({"name": f"{default['name']} (empty word cache, 1 pass)", "mb_per_s": n_bytes / fresh_s / 1e6,
                 "same_ids": fresh_ids == ref_ids})
    for name in ("hf tokenizers", "llama.cpp tokenize"):
        rows.append({"name": name, "error": errors[name]} if name in errors else
                    {"name": name, "mb_per_s": max(mbps[name]), "mb_per_s_passes": mbps[name],
                     "same_ids": ids[name] == ref_ids})
    # batch: all texts at once on numba's threads, against one-by-one ids
    t0 = time.perf_counter()
    batch_ids = best_tok.encode_batch(texts * 4, add_bos=False)
    batch_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    batch_ids = best_tok.encode_batch(texts * 4, add_bos=False)
    batch_s = min(batch_s, time.perf_counter() - t0)
    import numba

    rows.append({"name": f"corert bpe:{default_variant.name} encode_batch "
                         f"({numba.get_num_threads()} threads)",
                 "mb_per_s": 4 * n_bytes / batch_s / 1e6, "same_ids": batch_ids == ref_ids * 4})
    # per pass: the default variant and HF ran in the same pass, one after the other
    vs_hf = ratio_summary(ratios(mbps[default["name"]], mbps["hf tokenizers"])) if "hf tokenizers" in mbps else None
    linear = []
    if not getattr(args, "no_linear", False):
        for n in LINEAR_SIZES:
            text = "a" * n
            best_tok.encode(text)
            dt = float("inf")
            for _ in range(5):  # best of 5: the machine is shared
                t0 = time.perf_counter()
                best_tok.encode(text)
                dt = min(dt, time.perf_counter() - t0)
            linear.append({"n": n, "ns_per_byte": dt / n * 1e9})
    per_byte = [x["ns_per_byte"] for x in linear]
    return {"bench": "tokenize", "model": model_label(model), "pre_tokenizer": vocab.pre,
            "corpus": corpus, "corpus_files": len(files), "corpus_bytes": n_bytes, "repeat": repeat,
            "vocab_load_s": load_s, "rows": rows, "best": best["name"], "default": default["name"],
            "ratio_vs_hf": vs_hf and vs_hf["median"], "ratio_vs_hf_range": vs_hf and vs_hf["range"],
            "ratio_vs_hf_rounds": vs_hf and vs_hf["rounds"],
            "goal_ratio_vs_hf": 2.0, "linear": linear,
            "linear_spread": (max(per_byte) / min(per_byte)) if per_byte else None}


def render(result: dict[str, Any]) -> str:
    m = result.get("machine", {})
    lines = [f"tokenize bench — {result['model']} (pre-tokenizer {result['pre_tokenizer']}), "
             f"{result.get('corpus', 'corpus')}: {result['corpus_files']} files, "
             f"{result['corpus_bytes'] / 1e3:.0f} kB, best of "
             f"{result['repeat']} interleaved passes, single thread unless noted",
             f"machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, isa {m.get('isa', '?')}",
             f"{'tokenizer':<48} {'MB/s':>8}  same ids as corert"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"{r['name']:<48} {'-':>8}  {r['error']}")
        else:
            lines.append(f"{r['name']:<48} {r['mb_per_s']:>8.2f}  {'yes' if r['same_ids'] else 'NO'}")
    if result.get("ratio_vs_hf"):
        vs_hf = {"median": result["ratio_vs_hf"], "range": result["ratio_vs_hf_range"],
                 "rounds": result["ratio_vs_hf_rounds"]}
        lines.append(f"{result['default']} (default) / hf tokenizers, median of the passes' ratios = "
                     f"{format_ratio(vs_hf, 2)} (goal >= {result['goal_ratio_vs_hf']:.0f}x)")
    if result.get("linear"):
        cells = ", ".join(f"N={x['n']:,}: {x['ns_per_byte']:.0f} ns/B" for x in result["linear"])
        lines.append(f"'a' * N with {result['default']}: {cells} (spread {result['linear_spread']:.2f}x, "
                     f"goal <= 2x)")
    lines.append(f"vocabulary load: {result['vocab_load_s'] * 1e3:.0f} ms")
    return "\n".join(lines)
