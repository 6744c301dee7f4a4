"""Typed errors.  Everything corert raises for bad input derives from CorertError, so a host app can catch
one class, and the CLI turns any of them into one line on stderr and exit code 2."""


class CorertError(Exception):
    """Base class of every error corert raises on purpose."""


class ConfigError(CorertError, ValueError):
    """A setting, selection string or argument is invalid."""


class PluginError(CorertError):
    """A plugin or variant is unknown, unusable on this CPU, or failed."""


class ModelError(CorertError):
    """A model is unknown, missing, corrupt, or of a kind this engine cannot run."""


class InputError(CorertError, ValueError):
    """A request's input is invalid (empty prompt, ids out of range, text too long...)."""


class ContextLengthError(InputError):
    """A prompt does not fit the model's context (with room for one generated token)."""


class QueueFullError(CorertError):
    """The scheduler's queue is full: back-pressure, retry later."""


class TaskTimeoutError(CorertError, TimeoutError):
    """A task ran past its timeout."""


class CancelledError(CorertError):
    """A task was cancelled before it finished."""


class WorkerCrashed(CorertError):
    """The worker process serving a request died (a signal, an exit code) or stopped answering; the request
    is lost, the worker is restarted with its model.  Retrying the request is safe."""
