"""``corert …``: the command line.  Bad input is one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

from .errors import CorertError, InputError

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message; the contract is one line
        raise _UsageError(f"{self.prog}: {message}")


class _UsageError(Exception):
    pass


def _common(p: argparse.ArgumentParser, model: bool = True) -> None:
    g = p.add_argument_group("runtime")
    if model:
        g.add_argument("--model", "-m", help="model name from `corert models list`, or a path")
    g.add_argument("--engine", help="auto (default: native where it runs the model here, else llama.cpp) | "
                                   "native | llama.cpp | onnx")
    g.add_argument("--plugin", "-p", action="append", default=[], metavar="AREA=NAME[:VARIANT]",
                   help="select a plugin, e.g. tokenizer=bpe:scalar (repeatable)")
    g.add_argument("--disable", action="append", default=[], metavar="ENTRY_POINT",
                   help="do not load this plugin entry point (repeatable)")
    g.add_argument("--allow", action="append", default=[], metavar="ENTRY_POINT",
                   help="load only these third-party entry points (repeatable)")
    g.add_argument("--config", help="TOML config file ([corert] table)")
    g.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE", dest="set_options",
                   help="one sub-config setting, e.g. kv.budget=256M or scheduler.pin_threads=0 (repeatable)")
    g.add_argument("--threads", type=int, help="cores to use (default: all this process may use)")
    g.add_argument("--ctx", type=int, help="context length in tokens (default 2048)")
    g.add_argument("--isolation", choices=("none", "process"),
                   help="process: each loaded model runs in a supervised worker process (default none; "
                        "corert serve: process)")


def _runtime(args: argparse.Namespace, defaults: dict[str, Any] | None = None, **extra: Any):
    from .runtime import Runtime

    return Runtime(_config(args, defaults, **extra), progress=True)


def _config(args: argparse.Namespace, defaults: dict[str, Any] | None = None, **extra: Any):
    """The RuntimeConfig a command runs on.  Precedence: flags > environment > TOML file > ``defaults`` (a
    command's own, e.g. serve's isolation) > RuntimeConfig's."""
    from .runtime import RuntimeConfig

    start = RuntimeConfig().evolve(**(defaults or {}))
    base = RuntimeConfig.from_toml(args.config, base=start) if getattr(args, "config", None) else start
    base = RuntimeConfig.from_env(base)
    for option in getattr(args, "set_options", None) or ():
        base = base.set_option(option)
    over: dict[str, Any] = {}
    model_is_generation = not extra.pop("model_is_not_generation", False)
    if getattr(args, "model", None) and model_is_generation:
        over["model"] = args.model
    if getattr(args, "engine", None):
        over["engine"] = args.engine
    if getattr(args, "plugin", None):
        over["plugins"] = args.plugin
    if getattr(args, "threads", None):
        over["n_threads"] = args.threads
    if getattr(args, "ctx", None):
        over["n_ctx"] = args.ctx
    if getattr(args, "isolation", None):
        over["isolation"] = args.isolation
    if getattr(args, "disable", None):
        over["deny"] = tuple(base.deny) + tuple(args.disable)
    if getattr(args, "allow", None):
        over["allow"] = tuple(base.allow) + tuple(args.allow)
    over.update(extra)
    return base.evolve(**over)


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, ensure_ascii=False, indent=2, default=str)
    sys.stdout.write("\n")


# -- generate / chat -------------------------------------------------------------------------------------
def _sampling_args(p: argparse.ArgumentParser, max_tokens: int) -> None:
    p.add_argument("--max-tokens", "-n", type=int, default=max_tokens)
    p.add_argument("--temperature", "-t", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object (OpenAI-shaped + timings)")


def _sampling_kwargs(args) -> dict[str, Any]:
    return {"max_tokens": args.max_tokens, "temperature": args.temperature, "top_k": args.top_k,
            "top_p": args.top_p, "seed": args.seed, "stop": args.stop or None}


def cmd_generate(args) -> int:
    rt = _runtime(args)
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    if args.json:
        _print_json(rt.generate(prompt, **_sampling_kwargs(args)).to_dict())
        return 0
    last = None
    for chunk in rt.stream(prompt, **_sampling_kwargs(args)):
        sys.stdout.write(chunk.text)
        sys.stdout.flush()
        last = chunk.completion or last
    sys.stdout.write("\n")
    if last is not None and args.verbose:
        t = last.timings.to_dict()
        print(f"[{last.usage.prompt_tokens} prompt tokens, {last.usage.completion_tokens} generated; "
              f"prompt {t['prompt_tokens_per_s']:.1f} tok/s, decode {t['decode_tokens_per_s']:.1f} tok/s; "
              f"{last.plugins}]", file=sys.stderr)
    return 0


def cmd_chat(args) -> int:
    rt = _runtime(args)
    history: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []
    if args.message is not None:
        history.append({"role": "user", "content": args.message})
        result = rt.chat(history, **_sampling_kwargs(args))
        if args.json:
            _print_json(result.to_dict())
        else:
            print(result.text)
        return 0
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            sys.stderr.write("> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            return 0
        line = line.rstrip("\n")
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        reply = []
        try:
            for chunk in rt.chat(history, stream=True, **_sampling_kwargs(args)):
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
                reply.append(chunk.text)
        except InputError as exc:  # e.g. the conversation outgrew the context: say so, keep going
            history.pop()
            print(f"corert: error: {exc}", file=sys.stderr)
            continue
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": "".join(reply)})


# -- plugins / models ------------------------------------------------------------------------------------
def cmd_plugins(args) -> int:
    rt = _runtime(args)
    info = rt.plugins_info()
    info["llama_cpp"] = _llama_cpp_info(rt)
    if args.json:
        _print_json(info)
        return 0
    cpu = info["cpu"]
    choice = info["engine_choice"]
    print(f"CPU: {cpu['machine']} ({cpu['isa']}; {', '.join(cpu['features']) or 'no SIMD features'})  "
          f"engine: {info['engine']} -> {choice['engine'] or '?'} ({choice['reason']})")
    for area, entry in info["areas"].items():
        chosen = entry.get("chosen")
        head = f"{chosen['name']}:{chosen['variant']} ({chosen['reason']})" if chosen else \
            f"none ({entry.get('error', '')})"
        print(f"\n{area}: {head}")
        for impl in entry["implementations"]:
            variants = ", ".join(v["name"] + ("" if v["supported"] else " [unsupported]") for v in impl["variants"])
            print(f"  {impl['name']:<14} [{variants}]  {impl['description']}  (from {impl['plugin']})")
    for f in info["failures"]:
        print(f"\nfailed plugin {f['plugin']} ({f['stage']}): {f['error']}")
    for line in _kv_cache_lines(info.get("kv_cache")):
        print(line)
    for line in _llama_cpp_lines(info["llama_cpp"]):
        print(line)
    return 0


def _llama_cpp_info(rt) -> dict:
    """The llama.cpp engine's build, CPU backend and extra-buffer verdict; probes (once per build and CPU,
    in a child process) when no verdict exists yet and the configured model is already on disk."""
    from . import llama_lib, llama_probe

    if llama_probe.llama_package_dir() is None:
        return {"available": False, "error": "llama-cpp-python is not installed"}
    if llama_probe.current_verdict().source == "default":
        with contextlib.suppress(Exception):  # no model on disk yet: the verdict comes on the first load
            path = rt.store.resolve(rt.config.model, pull=False)
            if path.is_file() and path.suffix == ".gguf":
                llama_lib.prepare(str(path))
    return llama_lib.describe()


def _llama_cpp_lines(info: dict) -> list[str]:
    if not info.get("available"):
        return [f"\nengine llama.cpp: unavailable ({info.get('error', '')})"]
    state = "on" if info["extra_buffers"] else "off"
    return [f"\nengine llama.cpp {info['version']} (build {info['build']}): CPU backend {info['cpu_backend']} "
            f"({info['cpu_backend_choice']}), features {' '.join(info['cpu_features']) or 'none'}",
            f"  extra weight buffers {state} [{info['extra_buffers_source']}]: {info['extra_buffers_reason']}"]


def _kv_cache_lines(kv: dict | None) -> list[str]:
    """The KV cache's configuration and the live stats of loaded models' stores (paged cache)."""
    if not kv or "name" not in kv:
        return []
    lines = [f"\nkv_cache {kv['name']}"]
    settings = kv.get("settings")
    if settings and "flash_attn" in settings:
        state = "on" if settings["flash_attn"] else "off (llama.flash_attn=false)"
        lines.append(f"  cache type {settings['cache_type']}, flash attention {state}")
    cfg = kv.get("config")
    if cfg:
        budget = (f"{cfg['budget_bytes'] / 2**20:.0f} MiB" if cfg.get("budget_bytes") is not None else
                  f"every sequence at full length, at most {cfg.get('default_budget_cap_bytes', 0) / 2**20:.0f} MiB")
        lines.append(f"  pages of {cfg['page_tokens']} tokens, {cfg['dtype']}, budget {budget}, "
                     f"kernel {cfg['kernel']}")
    for st in kv.get("stores", []):
        lines.append(
            f"  {Path(st['model']).name}: pages {st['pages_used']} used / {st['pages_free']} free of "
            f"{st['pages_total']} ({st['pages_cached_free']} free but cached), {st['shared_pages']} shared; "
            f"{st['bytes_used'] / 2**20:.1f} of {st['bytes_total'] / 2**20:.1f} MiB, "
            f"{st['bytes_per_token']:.0f} B/token; prefix hit rate {st['prefix_hit_rate']:.2f}, "
            f"{st['evictions']} evictions, waste {st['waste']:.2f}")
    if cfg and not kv.get("stores"):
        lines.append("  (no model loaded in this process: live page stats appear once one is)")
    return lines


def cmd_models(args) -> int:
    from .models.store import ModelStore

    rt = _runtime(args, model_is_not_generation=True)
    store: ModelStore = rt.store
    if args.action == "list":
        rows = store.list()
        if args.json:
            _print_json(rows)
        else:
            for r in rows:
                mark = "pulled" if r["pulled"] else "-"
                print(f"{r['name']:<30} {r['kind']:<14} {r['size'] / 1e6:>8.0f} MB  {mark:<7} {r['description']}")
        return 0
    if not args.name:
        raise _UsageError(f"corert models {args.action}: a model NAME is required")
    if args.action == "pull":
        path = store.pull(args.name, force=args.force)
    else:
        path = store.resolve(args.name, pull=False)
    print(json.dumps({"name": args.name, "path": str(path)}) if args.json else path)
    return 0


# -- tokenize --------------------------------------------------------------------------------------------
def cmd_tokenize(args) -> int:
    rt = _runtime(args)
    if args.file and args.text is not None:
        raise _UsageError("corert tokenize: give TEXT or --file, not both")
    if args.file:
        try:
            # Invalid UTF-8 becomes U+FFFD, as llama.cpp's own tools read text (documented in the README).
            text = open(args.file, "rb").read().decode("utf-8", errors="replace")
        except OSError as exc:
            raise InputError(f"cannot read {args.file}: {exc.strerror}") from None
    else:
        text = args.text if args.text is not None else sys.stdin.read()
    ids = rt.tokenize(text, add_bos=False if args.no_bos else None, parse_special=args.special)
    if args.json:
        json.dump(ids, sys.stdout)
        sys.stdout.write("\n")
    else:
        tok = rt.tokenizer()
        for i in ids:
            print(f"{i:>7}  {tok.token_bytes(i)!r}")
    return 0


def cmd_detokenize(args) -> int:
    rt = _runtime(args)
    raw = args.ids if args.ids else [sys.stdin.read()]
    ids: list[int] = []
    for item in raw:
        item = item.strip()
        try:
            values = json.loads(item) if item.startswith("[") else [int(x) for x in item.replace(",", " ").split()]
        except ValueError:
            raise InputError(f"token ids must be integers or a JSON list, got {item[:40]!r}") from None
        if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise InputError("token ids must be a JSON list of integers")
        ids.extend(values)
    text = rt.detokenize(ids)
    if args.json:
        json.dump({"text": text}, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(text + "\n")
    return 0


# -- embed / classify ------------------------------------------------------------------------------------
def cmd_embed(args) -> int:
    rt = _runtime(args, model_is_not_generation=True)
    result = rt.embed(args.texts, model=args.model)
    d = result.to_dict()
    if args.json:
        _print_json(d)
    else:
        for text, vec in zip(args.texts, d["embeddings"]):
            head = ", ".join(f"{x:+.4f}" for x in vec[:6])
            print(f"[{head}, …] ({len(vec)} dims)  {text[:60]}")
    return 0


def cmd_classify(args) -> int:
    rt = _runtime(args, model_is_not_generation=True)
    result = rt.classify(args.texts, top_k=args.top_k, model=args.model)
    d = result.to_dict()
    if args.json:
        _print_json(d)
    else:
        for text, preds in zip(args.texts, d["results"]):
            labels = "  ".join(f"{p['label']} {p['score']:.3f}" for p in preds)
            print(f"{text[:60]!r}: {labels}")
    return 0


# -- serve -----------------------------------------------------------------------------------------------
def cmd_serve(args) -> int:
    from .server import command

    def make_runtime(**extra: Any):
        first = argparse.Namespace(**{**vars(args), "model": args.model[0] if args.model else None})
        return _runtime(first, **extra)

    def make_config(**extra: Any):
        first = argparse.Namespace(**{**vars(args), "model": args.model[0] if args.model else None})
        return _config(first, **extra)

    return command.run(args, make_runtime, make_config)


# -- modules with their own arguments (bench, perplexity, ab) ---------------------------------------------
def _module_command(module_name: str, args) -> int:
    mod = importlib.import_module(module_name)
    result = mod.run(args)
    result = {"machine": machine_info(), **result}
    if args.json:
        _print_json(result)
    else:
        print(mod.render(result))
    return int(result.get("exit_code", 0))


def machine_info() -> dict[str, Any]:
    from .cpu import info

    cpu = info()
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {"cpu": model or platform.processor(), "cores": cores, "isa": cpu.isa, "python": platform.python_version(),
            "platform": platform.platform()}


def cmd_bench(args) -> int:
    return _module_command(args.bench_module, args)


# -- parser ----------------------------------------------------------------------------------------------
def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The full parser.  Only the module of the command being run (``argv``) is imported to add its own
    arguments, so `corert generate` does not pay for importing every benchmark."""
    argv = list(argv)
    # bench cases come from plugins (the register_bench_cases hook): collected only for `corert bench`
    cases = _bench_cases() if not argv or argv[0] in ("bench", "-h", "--help") else {}
    wanted = (cases[argv[1]].module if len(argv) > 1 and argv[0] == "bench" and argv[1] in cases else
              {"perplexity": "corert.tools.perplexity", "ab": "corert.tools.ab"}.get(argv[0]) if argv else None)

    def module_arguments(module_name: str, p: argparse.ArgumentParser) -> None:
        if module_name == wanted:
            _add_module_arguments(module_name, p)

    parser = _Parser(prog="corert", description="A plugin-based local inference runtime.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("generate", help="generate text from a prompt")
    _common(p)
    _sampling_args(p, 128)
    p.add_argument("--verbose", "-v", action="store_true", help="print usage and speed to stderr")
    p.add_argument("prompt", nargs="?", help="the prompt (default: read stdin)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="chat through the model's chat template (interactive without MESSAGE)")
    _common(p)
    _sampling_args(p, 256)
    p.add_argument("--system", help="system message")
    p.add_argument("message", nargs="?", help="one message; without it, read a conversation from stdin")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("plugins", help="list plugins per area, their variants and the chosen ones (and the "
                                       "engine auto picks for --model, never pulled for this)")
    _common(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("models", help="list, pull or locate models")
    _common(p, model=False)
    p.add_argument("action", choices=("list", "pull", "path"))
    p.add_argument("name", nargs="?")
    p.add_argument("--force", action="store_true", help="pull again even if present")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("tokenize", help="text -> token ids with the tokenizer plugin")
    _common(p)
    p.add_argument("text", nargs="?", help="text (default: stdin)")
    p.add_argument("--file", "-f", help="read the text from a file")
    p.add_argument("--no-bos", action="store_true", help="never add BOS")
    p.add_argument("--special", action="store_true", help="parse special-token text into special ids")
    p.add_argument("--json", action="store_true", help="print a JSON list of ids")
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("detokenize", help="token ids -> text")
    _common(p)
    p.add_argument("ids", nargs="*", help="ids, or one JSON list (default: stdin)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_detokenize)

    p = sub.add_parser("embed", help="sentence embeddings (onnx engine)")
    _common(p)
    p.add_argument("texts", nargs="+")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("classify", help="intent classification (onnx engine)")
    _common(p)
    p.add_argument("texts", nargs="+")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (needs the serve extra)")
    _common(p, model=False)
    from .server.command import add_arguments as serve_arguments

    serve_arguments(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("perplexity", help="perplexity over a text file, optionally KL divergence vs a reference")
    _common(p)
    p.add_argument("--json", action="store_true")
    module_arguments("corert.tools.perplexity", p)
    p.set_defaults(func=lambda a: _module_command("corert.tools.perplexity", a))

    p = sub.add_parser("ab", help="compare two plugin sets on one workload, with quality gates")
    _common(p)
    p.add_argument("--json", action="store_true")
    module_arguments("corert.tools.ab", p)
    p.set_defaults(func=lambda a: _module_command("corert.tools.ab", a))

    bench = sub.add_parser("bench", help="benchmarks against the raw competitor, in one run")
    bsub = bench.add_subparsers(dest="bench", required=True, parser_class=_Parser)
    for case in cases.values():
        bp = bsub.add_parser(case.name, help=case.help or f"benchmark {case.name}")
        _common(bp)
        bp.add_argument("--json", action="store_true")
        module_arguments(case.module, bp)
        bp.set_defaults(func=cmd_bench, bench_module=case.module)
    return parser


def _bench_cases() -> dict[str, Any]:
    from .tools.cases import bench_cases

    return bench_cases()


def _add_module_arguments(module_name: str, parser: argparse.ArgumentParser) -> None:
    try:
        mod = importlib.import_module(module_name)
    except ImportError as exc:
        parser.set_defaults(_unavailable=f"{module_name} is not available: {exc}")
        return
    mod.add_arguments(parser)


def _one_line_warnings(message, category, filename, lineno, file=None, line=None):
    sys.stderr.write(f"corert: warning: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    warnings.showwarning = _one_line_warnings
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        args = build_parser(argv).parse_args(argv)
        if getattr(args, "_unavailable", None):
            raise CorertError(args._unavailable)
        return args.func(args)
    except _UsageError as exc:
        print(f"corert: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except CorertError as exc:
        print(f"corert: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
