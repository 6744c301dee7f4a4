"""Registers the onnx engine (embeddings and classification on onnxruntime)."""
from __future__ import annotations

from ...implementation import Implementation, Mode
from ...plugin_host import hookimpl


def make_engine(variant: str = "q8", config=None, **_context):
    from .config import OnnxConfig
    from .engine import OnnxEngine

    return OnnxEngine(variant=variant if variant != "default" else "q8", config=OnnxConfig.of(config))


@hookimpl
def register_engines(register):
    register(Implementation(
        area="engine", name="onnx", factory=make_engine,
        variants=(
            Mode("q8", priority=10,
                    description="graph prepared once: int8 weights per channel, int8 activations, "
                                "integer matmuls (VNNI), pooling inside the graph"),
            Mode("stock", priority=0,
                    description="the model file as shipped (MiniLM: int8 weights dequantized to fp32 at "
                                "load, fp32 matmuls), pooling in numpy"),
        ),
        description="onnxruntime: sentence embeddings and text classification (WordPiece encoders)",
    ))
