"""Settings of the onnx engine and the onnxruntime session options they turn into."""
from __future__ import annotations

import os
from typing import Any

import attrs

from ...errors import ConfigError
from ...interfaces import ThreadBudget

#: all-MiniLM-L6-v2's max_seq_length in sentence-transformers (its position table has 512 rows, but the
#: model was trained on 128-token pieces and sentence-transformers cuts at 256: so do we, unless a
#: sentence_bert_config.json beside the model says otherwise).
DEFAULT_MAX_LENGTH = 256

_OPT_LEVELS = ("disabled", "basic", "extended", "all")


@attrs.frozen
class OnnxConfig:
    graph_optimization: str = attrs.field(default="all", validator=attrs.validators.in_(_OPT_LEVELS))
    parallel_execution: bool = False   # inter-op parallelism: nothing to gain in a chain-shaped encoder
    mem_pattern: bool = True           # reuse one arena plan across runs of equal shape
    max_length: int | None = None      # None: from the model's files, else DEFAULT_MAX_LENGTH
    batch_size: int = 32               # texts per run when a request carries more (sorted by length)
    #: onnxruntime graph transformers turned off.  SkipLayerNormFusion: onnxruntime 1.32's CPU
    #: SkipLayerNormalization kernel is slower than the Add + LayerNormalization it replaces; measured on
    #: the q8 MiniLM graph, one thread, CPU time: 16 tokens 1660 -> 1411 us, 64 tokens 4844 -> 3803 us.
    disabled_optimizers: tuple[str, ...] = attrs.field(default=("SkipLayerNormFusion",), converter=tuple)

    @classmethod
    def of(cls, config: Any) -> "OnnxConfig":
        """Accepts an OnnxConfig, a dict of its fields, an object with an ``onnx`` attribute, or None."""
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config
        if isinstance(config, dict):
            try:
                return cls(**config)
            except TypeError as exc:
                raise ConfigError(f"bad onnx engine setting: {exc}") from None
        inner = getattr(config, "onnx", None)
        return cls.of(inner) if inner is not None else cls()


def default_budget() -> ThreadBudget:
    cores = os.cpu_count() or 1
    return ThreadBudget(cores=cores, llama_threads=cores, llama_batch_threads=cores, ort_intra_op=cores,
                        ort_inter_op=1, ort_spinning=False, numba_threads=cores)


def session_options(cfg: OnnxConfig, threads: ThreadBudget):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads.ort_intra_op))
    so.inter_op_num_threads = max(1, int(threads.ort_inter_op))
    if not threads.ort_spinning:
        # idle pool threads would otherwise spin-wait and burn a core the other pools were promised
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.graph_optimization_level = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[cfg.graph_optimization]
    so.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if cfg.parallel_execution
                         else ort.ExecutionMode.ORT_SEQUENTIAL)
    so.enable_mem_pattern = cfg.mem_pattern
    so.log_severity_level = 3  # errors only: the hardware-specific-graph warning is noise here
    return so


def new_session(path: str, cfg: OnnxConfig, threads: ThreadBudget):
    """An onnxruntime CPU session for ``path`` with these settings (errors are the caller's to wrap)."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options(cfg, threads), providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(cfg.disabled_optimizers))
