"""Seeded mutations of the onnx engine's model folders (the embedding encoder, the intent classifier), for
the malformed-model fuzz test.

A mutant replaces or deletes some files of a real model folder: the graph (truncated, bytes flipped where
the nodes and the inputs/outputs are, or edited with the onnx API into a well-formed but wrong graph),
tokenizer.json, labels.json, and config files our loader reads beside the model.  ``materialize`` builds
the folder from hard links to the pulled files, so only what changed is written (the prepared q8 graph is
linked too: it stays valid for an untouched model file, and is rebuilt for a changed one).
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Iterator

import attrs

MAIN = {"embed": "model.onnx", "classify": "classifier.onnx"}


@attrs.frozen
class FolderMutant:
    kind: str                       # the family counted in the report
    label: str
    task: str                       # "embed" or "classify"
    files: dict[str, bytes | None]  # name -> new content (None: deleted)

    def materialize(self, src: Path, dst: Path) -> None:
        dst.mkdir(parents=True)
        for f in src.iterdir():
            if f.is_file() and not f.name.startswith(".") and f.name not in self.files:
                os.link(f, dst / f.name)
        for name, data in self.files.items():
            if data is not None:
                (dst / name).write_bytes(data)


def _graph_edits(task: str):
    """(label, edit(model)) pairs: each leaves a parseable ModelProto that is wrong in one way."""
    def rename_input(m):
        m.graph.input[0].name = "ids"

    def drop_outputs(m):
        del m.graph.output[:]

    def unknown_op(m):
        m.graph.node[len(m.graph.node) // 2].op_type = "NoSuchOp"

    def delete_node(m):
        del m.graph.node[len(m.graph.node) // 2]

    def bad_dims(m):
        t = max(m.graph.initializer, key=lambda t: len(t.raw_data))
        t.dims[-1] -= 1  # no longer matches its raw data

    def drop_initializer(m):
        del m.graph.initializer[len(m.graph.initializer) // 2]

    def opset(version):
        def edit(m):
            m.opset_import[0].version = version
        return edit

    def ir(version):
        def edit(m):
            m.ir_version = version
        return edit

    def attr_type(m):
        from onnx import helper

        for n in m.graph.node:
            if n.op_type == "Softmax":
                del n.attribute[:]
                n.attribute.append(helper.make_attribute("axis", "last"))
                return

    def rank2_output(m):
        o = m.graph.output[0].type.tensor_type.shape
        del o.dim[1:]

    def cycle(m):
        a, b = m.graph.node[5], m.graph.node[6]
        a.input.append(b.output[0])  # a now depends on its successor

    edits = [("input_ids renamed", rename_input), ("no outputs", drop_outputs), ("unknown op", unknown_op),
             ("a node deleted", delete_node), ("initializer dims do not match its data", bad_dims),
             ("an initializer deleted", drop_initializer), ("opset 1", opset(1)), ("opset 99", opset(99)),
             ("ir_version 99", ir(99)), ("Softmax axis a string", attr_type), ("output rank 2", rank2_output),
             ("a cycle", cycle)]
    if task == "classify":
        def fewer_classes(m):
            m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 156
        edits.append(("156 classes for 157 labels", fewer_classes))
    return edits


def _tokenizer_edits():
    def setter(path, value):
        def edit(d):
            node = d
            for k in path[:-1]:
                node = node[k]
            node[path[-1]] = value
        return edit

    return [("empty vocab", setter(("model", "vocab"), {})), ("model null", setter(("model",), None)),
            ("vocab a list", setter(("model", "vocab"), ["[UNK]", "a"])),
            ("unknown model type", setter(("model", "type"), "NoSuchModel")),
            ("unk token not in vocab", setter(("model", "unk_token"), "[NOPE]")),
            ("max_length -1", setter(("truncation", "max_length"), -1)),
            ("max_length 2**70", setter(("truncation", "max_length"), 2**70)),
            ("added token id 10**9", setter(("added_tokens",), [{"id": 10**9, "content": "zz", "single_word": False,
                                                                  "lstrip": False, "rstrip": False,
                                                                  "normalized": False, "special": True}])),
            ("unknown normalizer", setter(("normalizer", "type"), "NoSuchNormalizer")),
            ("max_input_chars_per_word 0", setter(("model", "max_input_chars_per_word"), 0)),
            ("post_processor with unknown token", setter(("post_processor", "cls"), ["[NOPE]", 0]))]


def mutants(embed_dir: Path, classify_dir: Path, seed: int = 0) -> Iterator[FolderMutant]:
    import onnx

    rng = random.Random(f"{seed}:onnx")
    for task, folder in (("embed", embed_dir), ("classify", classify_dir)):
        main = MAIN[task]
        data = (folder / main).read_bytes()
        n = len(data)
        for cut in (0, 17, 4096, n // 3, n - 1):
            yield FolderMutant("onnx_truncate", f"{main} cut at {cut}", task, {main: data[:cut]})
        # a graph that still parses is prepared from scratch by the q8 variant (~5 s): a few flips only
        for where, lo, hi in (("nodes", 0, 60_000), ("inputs/outputs", n - 2_000, n),
                              ("inputs/outputs", n - 2_000, n)):
            b = bytearray(data)
            spots = sorted(rng.sample(range(lo, hi), rng.choice((1, 2, 4))))
            for at in spots:
                b[at] ^= rng.randrange(1, 256)
            yield FolderMutant("onnx_flip", f"{main}: bytes flipped in the {where} at {spots}", task, {main: bytes(b)})
        original = onnx.load_from_string(data)
        for label, edit in _graph_edits(task):
            m = onnx.ModelProto()
            m.CopyFrom(original)
            edit(m)
            yield FolderMutant("onnx_graph", f"{main}: {label}", task, {main: m.SerializeToString()})

        tok = (folder / "tokenizer.json").read_bytes()
        for label, content in (("empty", b""), ("truncated", tok[:len(tok) // 2]), ("not UTF-8", b"\xff\xfe{" * 9),
                               ("bytes flipped", _flip(rng, tok, 3))):
            yield FolderMutant("tokenizer_json", f"tokenizer.json {label}", task, {"tokenizer.json": content})
        for label, edit in _tokenizer_edits():
            d = json.loads(tok)
            edit(d)
            yield FolderMutant("tokenizer_json", f"tokenizer.json: {label}", task,
                               {"tokenizer.json": json.dumps(d).encode()})
        yield FolderMutant("missing_file", "tokenizer.json deleted", task, {"tokenizer.json": None})

        configs = [("config.json", b"[]"), ("config.json", b'{"max_position_embeddings": "x"}'),
                   ("config.json", b'{"max_position_embeddings": 0}'), ("config.json", b"{"),
                   ("sentence_bert_config.json", b'{"max_seq_length": "abc"}'),
                   ("sentence_bert_config.json", b'{"max_seq_length": [1]}')]
        if task == "classify":
            labels = json.loads((folder / "labels.json").read_bytes())
            for content in (b"not json", b"[]", b'{"labels": []}', b'{"labels": [1, 2]}', b'{"labels": ["a"]}',
                            json.dumps({**labels, "max_length": "abc"}).encode(),
                            json.dumps({**labels, "max_length": 2}).encode(),
                            json.dumps({**labels, "max_length": -1}).encode(),
                            json.dumps({**labels, "max_length": 10**12}).encode(),
                            json.dumps({**labels, "max_length": [256]}).encode(),
                            json.dumps({**labels, "max_length": 1.5}).encode()):
                configs.append(("labels.json", content))
            yield FolderMutant("missing_file", "labels.json deleted", task, {"labels.json": None})
            yield FolderMutant("config_json", "labels.json deleted, config.json id2label keys not indices", task,
                               {"labels.json": None, "config.json": b'{"id2label": {"a": "x"}}'})
        for name, content in configs:
            yield FolderMutant("config_json", f"{name} = {content[:60]!r}", task, {name: content})

        prepared = sorted(folder.glob(f"{Path(main).stem}.q8-*.onnx"))
        if prepared:
            p = prepared[-1]
            yield FolderMutant("prepared_cache", f"{p.name} truncated (its stamp still valid)", task,
                               {p.name: p.read_bytes()[:1000]})


def _flip(rng: random.Random, data: bytes, k: int) -> bytes:
    b = bytearray(data)
    for at in rng.sample(range(len(b)), k):
        b[at] ^= rng.randrange(1, 256)
    return bytes(b)
