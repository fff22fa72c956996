"""Finding and importing the app for ``run``, ``routes`` and ``config``. When the app's own code raises, the user
sees their frames only (as with ``flask run``): the error is in their code, not in click's, importlib's or ours."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from pathlib import Path

import click

from ..app import Otter
from ..discovery import AppTarget, NoAppFound, load_target, parse_target
from .output import EXIT_APP_FAILED
from .settings import resolve_or_exit


def load_app(app_text: str | None, debug: bool | None = None) -> tuple[AppTarget, Otter]:
    """Find and import the app. When the app's own code raises, print its traceback with the user's frames only
    (as ``flask run`` does: no click, importlib or otter frames) and exit 1; all of it with ``--debug``."""
    try:
        target = parse_target(app_text)
    except NoAppFound as exc:
        raise click.UsageError(str(exc)) from None
    try:
        return target, load_target(target)
    except NoAppFound as exc:
        raise click.UsageError(str(exc)) from None
    except Exception as exc:
        if resolve_or_exit({"DEBUG": debug})["DEBUG"]:
            raise
        click.echo(
            f"Error: the app {target.text!r} raised {type(exc).__name__} while loading "
            f"(your code's frames only; --debug or OTTER_DEBUG=true shows every frame):\n",
            err=True,
        )
        click.echo("".join(_user_traceback(exc).format()).rstrip(), err=True)
        sys.exit(EXIT_APP_FAILED)


# Frames of these never show in a startup traceback: the error is in the user's code. The first is the otter
# package itself (this file is otter/cli/loading.py), so no frame of any otter module shows.
_OUR_DIRS = tuple(
    str(directory) + os.sep
    for directory in (Path(__file__).parent.parent, Path(str(click.__file__)).parent, Path(importlib.__file__).parent)
)


def _user_traceback(exc: BaseException) -> traceback.TracebackException:
    """``exc``'s traceback (and those of its causes) without otter's, click's and importlib's frames."""
    shown = traceback.TracebackException.from_exception(exc)
    seen: set[int] = set()
    pending = [shown]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current.stack = traceback.StackSummary.from_list(
            [frame for frame in current.stack if not _is_machinery(frame.filename)]
        )
        pending.extend(chained for chained in (current.__cause__, current.__context__) if chained is not None)
    return shown


def _is_machinery(filename: str) -> bool:
    return filename.startswith(_OUR_DIRS) or filename.startswith("<frozen importlib")
