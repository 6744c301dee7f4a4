"""The other commands through the CLI: `tokenize --file` with invalid UTF-8 (as the README documents it),
`embed`, `classify` (and `Runtime.classify`), plain-text `generate` and a prompt on stdin, `--stop`, and
`--disable` / `--allow` with a third-party plugin distribution made on disk."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from cli_support import assert_bad_input, cli_json, make_plugin_dist, pythonpath_with, run_cli
from corert.errors import InputError

PROMPT = "The capital of France is"


# -- tokenize --file ------------------------------------------------------------------------------------
#: invalid UTF-8 of every kind: a lone continuation byte, bytes never valid (0xFF, 0xFE), a 4-byte lead
#: with no continuation (0xF1, 0xF2: SmolLM2 has no token for these bytes), a sequence cut at the end
RAW = b"caf\xc3\xa9 \xff\xfe na\x80ve \xf1\xf2 ok\n\xe2\x82"


def test_tokenize_file_with_invalid_utf8_gives_llama_cpp_ids_of_the_replaced_text(tmp_path, smollm2, raw_llama,
                                                                                  runtime):
    """README: `corert tokenize --file` decodes bytes with errors="replace" and gives llama.cpp's ids for
    the replaced text."""
    f = tmp_path / "bad.txt"
    f.write_bytes(RAW)
    replaced = RAW.decode("utf-8", errors="replace")
    assert replaced.count("\ufffd") == 6  # the cut sequence at the end is one
    ids = cli_json("tokenize", "-m", smollm2, "--file", str(f), "--no-bos", "--json")
    assert ids == raw_llama.tokenize(replaced.encode("utf-8"), add_bos=False, special=False)
    assert runtime.detokenize(ids) == replaced
    text = run_cli("tokenize", "-m", smollm2, "--file", str(f), "--no-bos")
    assert text.returncode == 0 and len(text.stdout.splitlines()) == len(ids)
    assert [int(ln.split()[0]) for ln in text.stdout.splitlines()] == ids


def test_tokenize_bad_input(tmp_path, smollm2):
    f = tmp_path / "a.txt"
    f.write_text("hello")
    assert_bad_input(run_cli("tokenize", "-m", smollm2, "--file", str(tmp_path / "missing.txt")),
                     "cannot read", "No such file or directory")
    assert_bad_input(run_cli("tokenize", "-m", smollm2, "--file", str(f), "hello"), "give TEXT or --file, not both")


def test_detokenize_ids_as_arguments_and_a_json_list_on_stdin(smollm2, runtime):
    """`corert detokenize` gives back the text of the ids `corert tokenize` gave, in both of its input forms
    (its bad input: test_bad_input.py)."""
    text = "Größe: 3 cafés ☕, naïve"
    ids = cli_json("tokenize", "-m", smollm2, "--no-bos", "--json", text)
    assert ids == runtime.tokenize(text, add_bos=False)
    plain = run_cli("detokenize", "-m", smollm2, *map(str, ids))
    assert plain.returncode == 0 and plain.stdout == text + "\n", plain.stderr
    assert cli_json("detokenize", "-m", smollm2, "--json", input=json.dumps(ids)) == {"text": text}


# -- embed / classify ------------------------------------------------------------------------------------
SENTENCES = ["A cat sits on the mat.", "A kitten is resting on a rug.", "Stock prices fell sharply today."]


def test_embed(runtime):
    d = cli_json("embed", "--json", *SENTENCES)
    assert d["model"] == "minilm-l6" and d["dim"] == 384
    e = np.array(d["embeddings"])
    assert e.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)  # unit vectors: cosine = dot
    assert e[0] @ e[1] > 0.5 > e[0] @ e[2]  # the two cat sentences are close, the stock one is not
    assert [x["truncated"] for x in d["inputs"]] == [False] * 3
    # the command line gives what the API gives
    api = np.array(runtime.embed(SENTENCES).to_dict()["embeddings"])
    np.testing.assert_allclose(e, api, atol=1e-5)
    # (the same batch: activations are quantized per tensor, so a text's vector depends a little on the
    # texts it is sent with, cosine ~0.995; see core/engines/onnx/prepare.py)
    text = run_cli("embed", *SENTENCES)
    assert text.returncode == 0
    lines = text.stdout.splitlines()
    assert len(lines) == 3 and all("(384 dims)" in ln for ln in lines) and lines[0].endswith(SENTENCES[0])
    assert [float(x) for x in lines[0][1:].split(", …]")[0].split(",")] == pytest.approx(e[0][:6], abs=6e-5)
    assert_bad_input(run_cli("embed", "  "), "texts[0] is empty")


INTENTS = {"book a table for two tonight at an italian place": "restaurant_reservation",
           "what will the weather be like tomorrow": "weather",
           "hello there": "greeting"}


def test_runtime_classify(runtime):
    texts = list(INTENTS)
    result = runtime.classify(texts, top_k=3)
    d = result.to_dict()
    assert d["model"] == "intent-minilm" and len(d["results"]) == len(texts)
    for text, preds in zip(texts, d["results"]):
        assert len(preds) == 3
        assert preds[0]["label"] == INTENTS[text]
        scores = [p["score"] for p in preds]
        assert scores == sorted(scores, reverse=True) and 0 < scores[-1] and scores[0] <= 1
        assert len({p["label"] for p in preds}) == 3
    one = runtime.classify(texts[:1], top_k=3).to_dict()["results"][0]
    assert runtime.classify(texts[:1], top_k=1).to_dict()["results"][0] == one[:1]  # a prefix of the ranking
    assert one[0]["label"] == d["results"][0][0]["label"]
    for bad in (0, -1, 2.5, "3"):
        with pytest.raises(InputError, match="top_k must be a positive integer"):
            runtime.classify(texts, top_k=bad)


def test_classify_cli(runtime):
    texts = list(INTENTS)
    d = cli_json("classify", "--json", "--top-k", "2", *texts)
    api = runtime.classify(texts, top_k=2).to_dict()["results"]
    assert [[p["label"] for p in preds] for preds in d["results"]] == [[p["label"] for p in preds] for preds in api]
    for cli_preds, api_preds in zip(d["results"], api):
        assert [p["score"] for p in cli_preds] == pytest.approx([p["score"] for p in api_preds], abs=1e-5)
    text = run_cli("classify", "--top-k", "1", "hello there")
    assert text.returncode == 0 and text.stdout.startswith("'hello there': greeting ")
    assert_bad_input(run_cli("classify", "--top-k", "0", "hello"), "top_k must be a positive integer, got 0")


# -- generate --------------------------------------------------------------------------------------------
def test_generate_plain_text_and_prompt_on_stdin(runtime):
    want = runtime.generate(PROMPT, max_tokens=12, temperature=0).text
    assert want.strip()
    arg = run_cli("generate", "--engine", "llama.cpp", "-t", "0", "-n", "12", PROMPT)
    assert arg.returncode == 0 and arg.stdout == want + "\n"
    stdin = run_cli("generate", "--engine", "llama.cpp", "-t", "0", "-n", "12", "--verbose",
                    input=PROMPT)
    assert stdin.returncode == 0 and stdin.stdout == want + "\n"
    usage = [ln for ln in stdin.stderr.splitlines() if ln.startswith("[")]
    assert len(usage) == 1 and usage[0].startswith(f"[{len(runtime.tokenize(PROMPT, parse_special=True))} prompt tokens, ")
    assert_bad_input(run_cli("generate", "-n", "4", input=""), "the prompt is empty")
    assert_bad_input(run_cli("generate", "-n", "0", PROMPT), "max_tokens must be a positive integer")


def test_generate_with_several_stop_strings(runtime):
    whole = runtime.generate(PROMPT, max_tokens=24, temperature=0).text
    words = whole.split()
    assert len(words) >= 4
    first, later = words[1], words[3]
    cut = min(whole.find(first), whole.find(later))
    args = ["generate", "--engine", "llama.cpp", "-t", "0", "-n", "24", "--stop", later,
            "--stop", "never-in-the-text", "--stop", first]
    proc = run_cli(*args, PROMPT)
    assert proc.returncode == 0 and proc.stdout == whole[:cut] + "\n"
    out = runtime.generate(PROMPT, max_tokens=24, temperature=0, stop=[later, "never-in-the-text", first])
    assert out.text == whole[:cut] and out.finish_reason == "stop"


# -- --disable / --allow ---------------------------------------------------------------------------------
EXTRA = '''
from corert import hookimpl
from corert.models.registry import ModelFile, ModelSpec, WheelMember


@hookimpl
def register_models(register):
    register(ModelSpec(name="extra-model", kind="bin", files=(
        ModelFile("x.bin", (WheelMember("x", "1", "x/x.bin"),), "0" * 64, 1),)))
'''


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    """Two third-party distributions: one registering a model, one that fails to import."""
    site = tmp_path_factory.mktemp("site")
    make_plugin_dist(site, "corert_extra", EXTRA)
    make_plugin_dist(site, "corert_broken", "raise ImportError('this plugin is broken')\n")
    return {"PYTHONPATH": pythonpath_with(site), "CORERT_DISABLE": None, "CORERT_ALLOW": None}


def _models(*args, env):
    proc = run_cli("models", "list", "--json", *args, env=env)
    assert proc.returncode == 0, proc.stderr
    return {r["name"] for r in json.loads(proc.stdout)}, proc.stderr


def test_third_party_plugins_disable_and_allow(plugin_env):
    names, err = _models(env=plugin_env)
    assert "extra-model" in names and "smollm2-135m-instruct" in names
    # the broken plugin is reported in one warning line and skipped; everything else works
    assert [ln for ln in err.splitlines() if ln.strip()] == [
        "corert: warning: corert plugin 'corert_broken' skipped (import failed: ImportError: this plugin is broken)"]

    names, err = _models("--disable", "corert_broken", "--disable", "corert_extra", env=plugin_env)
    assert "extra-model" not in names and "smollm2-135m-instruct" in names and err == ""
    names, err = _models("--disable", "corert_extra", env={**plugin_env, "CORERT_DISABLE": "corert_broken"})
    assert "extra-model" not in names and err == ""  # the environment's list and the flag add up
    cfg = plugin_env["PYTHONPATH"].split(os.pathsep)[0] + "/deny.toml"
    Path(cfg).write_text('[corert]\ndeny = ["corert_broken"]\n')
    names, err = _models("--config", cfg, "--disable", "corert_extra", env=plugin_env)
    assert "extra-model" not in names and err == ""  # so do the config file's list and the flag

    # --allow admits only the named third-party entry points; the built-in plugins always load
    names, err = _models("--allow", "corert_extra", env=plugin_env)
    assert "extra-model" in names and "smollm2-135m-instruct" in names and err == ""
    names, err = _models("--allow", "nothing-by-that-name", env=plugin_env)
    assert "extra-model" not in names and "smollm2-135m-instruct" in names and err == ""
    names, err = _models(env={**plugin_env, "CORERT_ALLOW": "corert_extra"})
    assert "extra-model" in names and err == ""


def test_disable_a_builtin_plugin(plugin_env, smollm2):
    info = cli_json("plugins", "--json", "--disable", "tokenizer_bpe", "--disable", "corert_broken", env=plugin_env)
    tok = info["areas"]["tokenizer"]
    assert [i["name"] for i in tok["implementations"]] == ["llama_cpp"]
    assert tok["chosen"]["name"] == "llama_cpp"
    # the runtime works on with what is left: tokenizing with the llama.cpp tokenizer
    ids = cli_json("tokenize", "-m", smollm2, "--json", "--disable", "tokenizer_bpe", "--disable", "corert_broken",
                   PROMPT, env=plugin_env)
    assert ids == cli_json("tokenize", "-m", smollm2, "--json", "--disable", "corert_broken", PROMPT, env=plugin_env)
    assert_bad_input(run_cli("tokenize", "-m", smollm2, "--disable", "tokenizer_bpe", "--disable", "corert_broken",
                             "--plugin", "tokenizer=bpe", PROMPT, env=plugin_env), "unknown tokenizer plugin 'bpe'")
