"""``corert bench tokenize``: single-thread encode throughput of the bpe tokenizer (every variant this CPU
runs) against Hugging Face ``tokenizers`` built from the same vocabulary and merges and against llama.cpp's
own tokenizer, on the same corpus in one process run; plus the time per byte of 'a' * N (linear time)."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"
LINEAR_SIZES = (10_000, 100_000, 1_000_000)

# The pre-tokenizer regexes of the Hugging Face tokenizer.json files these GGUF vocabularies come from.
_HF_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
             r"\s*[\r\n]+|\s+(?!\S)|\s+")


def add_arguments(parser) -> None:
    parser.add_argument("--corpus", default=None,
                        help="folder of text files (default: the corpus shipped with corert, $CORERT_CORPUS overrides)")
    parser.add_argument("--repeat", type=int, default=3, help="passes over the corpus; the best counts")
    parser.add_argument("--no-linear", action="store_true", help="skip the 'a' * N timing")


def _corpus(folder: str | None) -> tuple[str, list[tuple[str, str]]]:
    """(what the result calls the corpus, [(file name, text)]): the given folder or the packaged corpus."""
    from corert.data import corpus_files
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


def _best_mbps(encode, texts: list[str], n_bytes: int, repeat: int) -> tuple[float, list[list[int]]]:
    ids = [encode(t) for t in texts]  # warm-up pass (JIT, caches), also the ids compared below
    best = float("inf")
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        for t in texts:
            encode(t)
        best = min(best, time.perf_counter() - t0)
    return n_bytes / best / 1e6, ids


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
    from corert.bench.labels import model_label
    from corert.cpu import choose_variant, info, simd_variants
    from corert.models.store import ModelStore

    from .bpe import BpeTokenizer
    from .vocab import load_vocab

    model = getattr(args, "model", None) or DEFAULT_MODEL
    path = str(Path(model)) if Path(model).is_file() else str(ModelStore().resolve(model))
    corpus, files = _corpus(getattr(args, "corpus", None))
    texts = [t for _, t in files]
    n_bytes = sum(len(t.encode()) for t in texts)
    repeat = int(getattr(args, "repeat", 3) or 3)
    t0 = time.perf_counter()
    vocab = load_vocab(path)
    load_s = time.perf_counter() - t0
    rows: list[dict[str, Any]] = []
    ref_ids = None
    cpu = info()
    for v in simd_variants():
        if not v.supported(cpu):
            continue
        tok = BpeTokenizer(vocab, v.name)
        mbps, ids = _best_mbps(lambda t: tok.encode(t, add_bos=False), texts, n_bytes, repeat)
        ref_ids = ref_ids or ids
        rows.append({"name": f"corert bpe:{v.name}", "mb_per_s": mbps, "same_ids": ids == ref_ids})
    # the same with an empty word cache: one pass of a fresh tokenizer (the rows above reuse words seen
    # in earlier passes, as Hugging Face's BPE cache does)
    fresh = BpeTokenizer(vocab, rows[0]["name"].split(":")[1])
    t0 = time.perf_counter()
    fresh_ids = [fresh.encode(t, add_bos=False) for t in texts]
    fresh_s = time.perf_counter() - t0
    cold_row = {"name": f"{rows[0]['name']} (empty word cache, 1 pass)", "mb_per_s": n_bytes / fresh_s / 1e6,
                "same_ids": fresh_ids == ref_ids}
    best = max(rows, key=lambda r: r["mb_per_s"])
    # the variant a user gets without asking is the one the ratio, batch and linear rows use
    default_variant, _ = choose_variant(simd_variants(), None, "tokenizer=bpe")
    default = next(r for r in rows if r["name"] == f"corert bpe:{default_variant.name}")
    best_tok = BpeTokenizer(vocab, default_variant.name)
    rows.append(cold_row)
    hf = None
    try:
        hf = hf_tokenizer(vocab)
        if hf is None:
            rows.append({"name": "hf tokenizers", "error": "not built for SentencePiece vocabularies"})
    except Exception as exc:  # the comparison is optional; say why it is missing
        rows.append({"name": "hf tokenizers", "error": f"{type(exc).__name__}: {exc}"})
    if hf is not None:
        mbps, ids = _best_mbps(lambda t: hf.encode(t, add_special_tokens=False).ids, texts, n_bytes, repeat)
        rows.append({"name": "hf tokenizers", "mb_per_s": mbps, "same_ids": ids == ref_ids})
    try:
        import llama_cpp

        llama = llama_cpp.Llama(path, vocab_only=True, verbose=False)
        mbps, ids = _best_mbps(lambda t: llama.tokenize(t.encode(), add_bos=False, special=False), texts,
                               n_bytes, repeat)
        rows.append({"name": "llama.cpp tokenize", "mb_per_s": mbps, "same_ids": ids == ref_ids})
    except ImportError as exc:
        rows.append({"name": "llama.cpp tokenize", "error": str(exc)})
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
    hf_row = next((r for r in rows if r["name"] == "hf tokenizers" and "mb_per_s" in r), None)
    ratio = default["mb_per_s"] / hf_row["mb_per_s"] if hf_row else None
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
            "ratio_vs_hf": ratio,
            "goal_ratio_vs_hf": 2.0, "linear": linear,
            "linear_spread": (max(per_byte) / min(per_byte)) if per_byte else None}


def render(result: dict[str, Any]) -> str:
    m = result.get("machine", {})
    lines = [f"tokenize bench — {result['model']} (pre-tokenizer {result['pre_tokenizer']}), "
             f"{result.get('corpus', 'corpus')}: {result['corpus_files']} files, "
             f"{result['corpus_bytes'] / 1e3:.0f} kB, best of "
             f"{result['repeat']} passes, single thread unless noted",
             f"machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, isa {m.get('isa', '?')}",
             f"{'tokenizer':<48} {'MB/s':>8}  same ids as corert"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"{r['name']:<48} {'-':>8}  {r['error']}")
        else:
            lines.append(f"{r['name']:<48} {r['mb_per_s']:>8.2f}  {'yes' if r['same_ids'] else 'NO'}")
    if result.get("ratio_vs_hf"):
        lines.append(f"{result['default']} (default) / hf tokenizers = {result['ratio_vs_hf']:.2f}x "
                     f"(goal >= {result['goal_ratio_vs_hf']:.0f}x)")
    if result.get("linear"):
        cells = ", ".join(f"N={x['n']:,}: {x['ns_per_byte']:.0f} ns/B" for x in result["linear"])
        lines.append(f"'a' * N with {result['default']}: {cells} (spread {result['linear_spread']:.2f}x, "
                     f"goal <= 2x)")
    lines.append(f"vocabulary load: {result['vocab_load_s'] * 1e3:.0f} ms")
    return "\n".join(lines)
