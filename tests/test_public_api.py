"""The package exports exactly its public names, sorted, and every documented import works."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import otter

SEED_NAMES = {"Otter", "Blueprint", "Client", "use_args"}


def public_names(module: object) -> set[str]:
    return {name for name, value in vars(module).items() if not name.startswith("_") and not inspect.ismodule(value)}


def test_all_is_sorted() -> None:
    assert otter.__all__ == sorted(otter.__all__)
    assert len(set(otter.__all__)) == len(otter.__all__)


def test_all_is_exactly_the_public_names() -> None:
    assert set(otter.__all__) == public_names(otter) | {"__version__"}
    assert set(otter.__all__) >= SEED_NAMES


@pytest.mark.parametrize("name", otter.__all__)
def test_every_exported_name_imports(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from otter import {name}", namespace)
    assert namespace[name] is getattr(otter, name)


def test_seed_imports() -> None:
    from otter import Blueprint, Client, Otter
    from otter.decorators import use_args

    assert use_args is otter.use_args
    assert (Otter, Blueprint, Client) == (otter.Otter, otter.Blueprint, otter.Client)


MODULES = sorted(info.name for info in pkgutil.walk_packages(otter.__path__, "otter.") if info.name != "otter.__main__")


@pytest.mark.parametrize("module_name", MODULES)
def test_every_name_in_a_module_all_exists(module_name: str) -> None:
    module = importlib.import_module(module_name)
    missing = [name for name in getattr(module, "__all__", ()) if not hasattr(module, name)]
    assert missing == []


def test_typed_marker_ships() -> None:
    assert (Path(otter.__file__).parent / "py.typed").exists()
