"""corert: a plugin-based local inference runtime.

    >>> import corert
    >>> rt = corert.Runtime()                      # default model, engine and plugins
    >>> rt.generate("Hello", max_tokens=16).text
"""
from .errors import (CancelledError, ConfigError, CorertError, InputError, ModelError, PluginError,
                     QueueFullError, TaskTimeoutError)
from .plugin_host import Selection, hookimpl
from .implementation import AREAS, Implementation, Mode
from .cpu import Variant

__version__ = "0.1.0"

__all__ = ["AREAS", "CancelledError", "ConfigError", "CorertError", "Implementation", "InputError",
           "ModelError", "Mode", "PluginError", "QueueFullError", "Runtime", "RuntimeConfig", "Selection",
           "TaskTimeoutError", "Variant", "hookimpl"]


def __getattr__(name):  # Runtime pulls in numpy and the engines: import it only when asked for
    if name == "Runtime":
        from . import runtime

        return runtime.Runtime
    if name == "RuntimeConfig":
        from .config import RuntimeConfig

        return RuntimeConfig
    raise AttributeError(name)
