"""Maps the source folders onto the installed names: core/ -> corert, plugins/ -> corert.plugins.

The top level is fixed by the project's design card (core/, plugins/), while the import name is `corert`
so a host application with its own `core` package can embed us. pyproject.toml cannot rename
sub-packages found by discovery, so the list is computed here.
"""
from setuptools import find_packages, setup


def _renamed(folder: str, name: str) -> list[str]:
    return [name + pkg[len(folder):] for pkg in find_packages(include=[folder, folder + ".*"])]


setup(
    packages=_renamed("core", "corert") + _renamed("plugins", "corert.plugins"),
    package_dir={"corert": "core", "corert.plugins": "plugins"},
)
