"""A document as the text a file or a terminal gets: JSON, or YAML (the form AsyncAPI tools show first)."""

from __future__ import annotations

import json
from typing import Any

from ..errors import ConfigurationError

__all__ = ["FORMATS", "dumps"]

FORMATS = ("yaml", "json")


def dumps(doc: Any, fmt: str = "yaml") -> str:
    """``doc`` as YAML (keys in the document's order) or indented JSON, ending with a newline."""
    if fmt == "json":
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    if fmt != "yaml":
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    try:
        import yaml
    except ImportError:
        raise ConfigurationError("YAML output needs PyYAML; pip install 'otter-mq[docs]', or ask for JSON") from None
    text: str = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=120)
    return text
