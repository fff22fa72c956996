"""mkdocs hook: the API reference must be whole. Every public name of the modules users import (their ``__all__``)
has a ``::: module.name`` block in docs/api/, and every class and function among them, and every public method
Otter defines on those classes, has a docstring of its own. A gap is a warning, which ``mkdocs build --strict``
turns into a failure."""

from __future__ import annotations

import importlib
import inspect
import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.plugins.otter")

# The modules whose names the reference covers: the package and the submodules users import themselves.
PUBLIC_MODULES = ("otter", "otter.testing", "otter.config", "otter.logs", "otter.tracing", "otter.asyncapi",
                  "otter.dlq", "otter.services", "otter.dashboard")
_BLOCK = re.compile(r"^:::\s+([\w.]+)", re.MULTILINE)


def gaps(docs_dir: Path) -> list[str]:
    """What the reference lacks, one line each."""
    documented = {match for page in (docs_dir / "api").glob("*.md") for match in _BLOCK.findall(page.read_text())}
    problems = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            if f"{module_name}.{name}" not in documented:
                problems.append(f"{module_name}.{name} is public (in __all__) but has no '::: {module_name}.{name}' "
                                f"block in docs/api/")
            problems += _undocumented(f"{module_name}.{name}", getattr(module, name))
    return problems


def _undocumented(path: str, obj: Any) -> list[str]:
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        return []
    missing = [] if obj.__doc__ else [f"{path} has no docstring"]
    if inspect.isclass(obj):
        for name in dir(obj):
            if name.startswith("_"):
                continue
            owner = next((cls for cls in obj.__mro__ if name in vars(cls)), None)
            if owner is None or not owner.__module__.startswith("otter"):
                continue  # inherited from the standard library or a dependency: documented there
            member = vars(owner)[name]
            function = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
            if (inspect.isfunction(function) or isinstance(member, property)) and not function.__doc__:
                missing.append(f"{path}.{name} has no docstring")
    return missing


def on_pre_build(config: Any, **kwargs: Any) -> None:
    for problem in gaps(Path(config["docs_dir"])):
        log.warning("API reference: %s", problem)
