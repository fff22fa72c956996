"""Find the app to serve from what the user typed, the way ``flask run`` does.

``APP`` is ``module``, ``module:name``, ``module:factory(args)`` or a file path (``path/to/service.py``, optionally
with ``:name``); without it, ``OTTER_APP``, then ``app.py`` in the current directory. In a module, the app is the
variable named, else ``app``, else the only ``Otter`` instance, else what ``create_app()``/``make_app()`` returns.

>>> load_app("examples.app:app")
<Otter 'otter' with 3 handlers>
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .app import Otter
from .errors import ConfigurationError

__all__ = ["APP_ENV", "AppTarget", "NoAppFound", "load_app", "parse_target"]

APP_ENV = "OTTER_APP"
FACTORY_NAMES = ("create_app", "make_app")

HOW_TO_NAME_THE_APP = f"""Tell otter where the app is, for example:
    otter run myservice.app:app       a module and the variable that holds the Otter app
    otter run path/to/service.py      a file; otter takes `app`, the only Otter instance, or create_app()
    otter run "myservice:create_app('dev')"   a factory, with arguments
or set {APP_ENV}=myservice.app:app"""


class NoAppFound(ConfigurationError):
    """What the user typed does not lead to an app; the message says what to type instead."""


@dataclass(frozen=True)
class AppTarget:
    """Where the app is: a module to import (after putting ``search_path`` on ``sys.path``) and an expression."""

    module: str
    expression: str | None
    search_path: str
    text: str

    @property
    def source_dir(self) -> Path:
        """The directory whose files make up the app's code (watched by ``--reload``)."""
        return Path(self.search_path)


def parse_target(text: str | None, cwd: str | None = None) -> AppTarget:
    """Turn ``APP`` (or ``OTTER_APP``, or ``app.py`` here) into a module to import and an optional expression."""
    cwd = cwd or os.getcwd()
    text = text or os.environ.get(APP_ENV) or ("app.py" if Path(cwd, "app.py").is_file() else None)
    if not text:
        raise NoAppFound(f"no app given, {APP_ENV} is not set and there is no app.py here.\n{HOW_TO_NAME_THE_APP}")
    path_part, expression = _split_expression(text)
    if path_part.endswith(".py") or os.sep in path_part:
        path = Path(cwd, path_part)
        if not path.exists():
            raise NoAppFound(f"no such file: {path_part!r}.\n{HOW_TO_NAME_THE_APP}")
        module, search_path = _module_for_path(path.resolve())
        return AppTarget(module, expression, search_path, text)
    return AppTarget(path_part, expression, cwd, text)


def load_app(text: str | None, cwd: str | None = None) -> Otter:
    """Import the module ``text`` names and return its app; ``NoAppFound`` explains what to type when it can't."""
    return load_target(parse_target(text, cwd))


def load_target(target: AppTarget) -> Otter:
    module = _import(target)
    if target.expression is None:
        return _find_app(module, target)
    return _evaluate(module, target)


def _split_expression(text: str) -> tuple[str, str | None]:
    # "pkg.mod:create_app('a:b')": split on the first colon that is not inside the expression.
    head, sep, tail = text.partition(":")
    if not sep:
        return text, None
    if not tail.strip():
        raise NoAppFound(f"nothing after the colon in {text!r}.\n{HOW_TO_NAME_THE_APP}")
    return head, tail.strip()


def _module_for_path(path: Path) -> tuple[str, str]:
    """The dotted module name of a file, and the directory to put on ``sys.path`` (above its packages)."""
    if path.is_dir():
        path = path / "__init__.py"
    if path.suffix != ".py":
        raise NoAppFound(f"{str(path)!r} is not a Python file.\n{HOW_TO_NAME_THE_APP}")
    names = [] if path.name == "__init__.py" else [path.stem]
    directory = path.parent
    while (directory / "__init__.py").is_file():
        names.append(directory.name)
        directory = directory.parent
    return ".".join(reversed(names)), str(directory)


def _import(target: AppTarget) -> ModuleType:
    if target.search_path not in sys.path:
        sys.path.insert(0, target.search_path)
    try:
        return importlib.import_module(target.module)
    except ModuleNotFoundError as exc:
        # Only "the module you named does not exist" is ours to explain; an import failing inside the app's own
        # code is a bug there, and its traceback says more than we could.
        missing = exc.name or ""
        if target.module == missing or target.module.startswith(missing + "."):
            raise NoAppFound(
                f"cannot import {target.module!r} (from {target.text!r}): no module named {missing!r} "
                f"in {target.search_path}.\n{HOW_TO_NAME_THE_APP}"
            ) from None
        raise


def _find_app(module: ModuleType, target: AppTarget) -> Otter:
    app = getattr(module, "app", None)
    if isinstance(app, Otter):
        return app
    found = _otter_instances(module)
    if len(found) == 1:
        return next(iter(found.values()))
    if len(found) > 1:
        names = ", ".join(sorted(found))
        raise NoAppFound(
            f"{target.module!r} has several Otter apps ({names}); say which one: "
            f"otter run {target.module}:{sorted(found)[0]}"
        )
    for name in FACTORY_NAMES:
        factory = getattr(module, name, None)
        if inspect.isfunction(factory):
            return _checked(_call_factory(factory, f"{target.module}:{name}()"), f"{target.module}:{name}()")
    raise NoAppFound(
        f"no Otter app in {target.module!r}: it has no variable `app`, no Otter instance and no create_app() "
        f"factory. Name the variable, for example: otter run {target.module}:my_app"
    )


def _evaluate(module: ModuleType, target: AppTarget) -> Otter:
    assert target.expression is not None
    where = f"{target.module}:{target.expression}"
    try:
        node = ast.parse(target.expression, mode="eval").body
    except SyntaxError:
        raise NoAppFound(
            f"cannot parse {target.expression!r} in {where!r}: use a name or a call, like app or create_app('dev')"
        ) from None
    if isinstance(node, ast.Name):
        name, args, kwargs, call = node.id, [], {}, False
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        try:
            args = [ast.literal_eval(arg) for arg in node.args]
            kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg is not None}
        except ValueError:
            raise NoAppFound(f"the arguments in {where!r} must be literals (strings, numbers...)") from None
        name, call = node.func.id, True
    else:
        raise NoAppFound(f"{target.expression!r} in {where!r} is neither a name nor a call like create_app()")
    if not hasattr(module, name):
        found = sorted(_otter_instances(module))
        hint = f"; it has: {', '.join(found)}" if found else ""
        raise NoAppFound(f"{target.module!r} has no attribute {name!r}{hint}")
    value = getattr(module, name)
    if call:
        return _checked(_call_factory(value, where, *args, **kwargs), where)
    if not isinstance(value, Otter) and inspect.isfunction(value):  # a factory named without parentheses
        return _checked(_call_factory(value, where), where)
    return _checked(value, where)


def _call_factory(factory: Any, where: str, *args: Any, **kwargs: Any) -> Any:
    try:
        inspect.signature(factory).bind(*args, **kwargs)
    except TypeError as exc:
        raise NoAppFound(f"cannot call {where}: {exc}") from None
    return factory(*args, **kwargs)


def _checked(value: Any, where: str) -> Otter:
    if not isinstance(value, Otter):
        raise NoAppFound(f"{where!r} is {type(value).__name__} {value!r:.80}, not an Otter app")
    return value


def _otter_instances(module: ModuleType) -> dict[str, Otter]:
    found: dict[str, Otter] = {}
    for name, value in vars(module).items():
        if isinstance(value, Otter) and all(value is not other for other in found.values()):
            found[name] = value
    return found
