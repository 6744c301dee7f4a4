"""Moved to :mod:`corert.implementation` (this module name said nothing about its content); kept so imports
written against the old name keep working."""
from .implementation import AREAS, ENGINE_AREA, Implementation, Mode, engine_name  # noqa: F401
