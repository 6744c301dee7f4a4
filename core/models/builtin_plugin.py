"""Registers the models of shared/MODELS.md with the model store, as a plugin like any other."""
from ..plugin_host import hookimpl
from .registry import BUILTIN_MODELS


@hookimpl
def register_models(register):
    for spec in BUILTIN_MODELS:
        register(spec)
