"""Griffe extension for the API reference: the ``>>>`` examples in Otter's docstrings become ``pycon`` code blocks
(Markdown would read ``>`` as a quote and ``["key"]`` as a link)."""

from __future__ import annotations

from typing import Any

import griffe


def fenced(text: str) -> str:
    """``text`` with each run of ``>>>``/``...`` lines and their output lines fenced as ``pycon``."""
    out: list[str] = []
    in_example = False
    for line in text.split("\n"):
        starts = line.lstrip().startswith((">>>", "..."))
        if starts and not in_example:
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}```pycon")
            in_example = True
        elif in_example and not line.strip():
            out.append(f"{indent}```")
            in_example = False
        out.append(line)
    if in_example:
        out.append(f"{indent}```")
    return "\n".join(out)


class DoctestBlocks(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = fenced(obj.docstring.value)
