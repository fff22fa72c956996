"""One self-contained HTML page of an AsyncAPI document, rendered by Otter itself: no JavaScript, no CDN, no font
or stylesheet from elsewhere, so it works offline and shows the same everywhere. Every text from the document is
escaped, so a docstring or a schema cannot inject markup."""

from __future__ import annotations

import json
from collections.abc import Mapping
from html import escape
from typing import Any

__all__ = ["render_html"]

_STYLE = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header,main{max-width:1000px;margin:0 auto;padding:0 24px}
header{padding-top:24px}h1{margin:0 0 4px}h1 small{font-size:55%;color:#667}
nav ul{columns:2;padding-left:18px}section.op{background:#fff;border:1px solid #dde1e7;border-radius:8px;
padding:4px 20px 16px;margin:18px 0}h2{font-size:1.15em}h3{font-size:1em;margin:18px 0 6px}
.kind{display:inline-block;font-size:.75em;text-transform:uppercase;letter-spacing:.05em;border-radius:4px;
padding:1px 7px;margin-right:8px;color:#fff;background:#556}.kind.rpc{background:#2f6fbf}.kind.task{background:#2e8b57}
.kind.broadcast{background:#b5651d}code{background:#eef0f4;border-radius:3px;padding:0 3px}
pre{background:#1d2330;color:#e8eaf0;padding:10px 12px;border-radius:6px;overflow-x:auto;font-size:13px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:8px 0}dt{color:#556}dd{margin:0}
ul.schema{list-style:none;padding-left:18px;border-left:2px solid #e3e6ec;margin:4px 0}.req{color:#c0392b}
.type{color:#7a3e9d}.note{color:#556}footer{color:#778;font-size:.85em;padding:24px}
"""
_MAX_DEPTH = 8


def render_html(doc: Mapping[str, Any], *, downloads: bool = False) -> str:
    """The page of ``doc``: its servers, then each operation with its channel, bindings, messages (headers, payload
    schema, example) and reply, then the shared schemas. ``downloads`` links the document as ``asyncapi.json`` and
    ``asyncapi.yaml`` beside the page (what ``otter docs --serve`` serves)."""
    info = doc.get("info", {})
    title = str(info.get("title", "AsyncAPI document"))
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)} · AsyncAPI</title><style>{_STYLE}</style></head><body>",
        f"<header><h1>{escape(title)} <small>{escape(str(info.get('version', '')))}</small></h1>",
        f"<p>{escape(str(info.get('description', '')))}</p>",
        f"<p class=note>AsyncAPI {escape(str(doc.get('asyncapi', '')))} · default content type "
        f"<code>{escape(str(doc.get('defaultContentType', '')))}</code>",
    ]
    if downloads:
        parts.append(' · the document: <a href="asyncapi.yaml">YAML</a>, <a href="asyncapi.json">JSON</a>')
    parts.append("</p></header><main>")
    parts.append(_servers(doc.get("servers", {})))
    operations = doc.get("operations", {})
    parts.append(_contents(operations))
    for key, operation in operations.items():
        parts.append(_operation(doc, key, operation))
    schemas = doc.get("components", {}).get("schemas", {})
    if schemas:
        parts.append("<h2>Schemas</h2>")
        for name, schema in schemas.items():
            parts.append(f'<section class=op id="schema-{escape(name)}"><h3>{escape(name)}</h3>'
                         f"{_schema(schema)}</section>")
    parts.append("</main><footer>Rendered by Otter from its AsyncAPI document; works offline.</footer></body></html>")
    return "\n".join(parts)


def _servers(servers: Mapping[str, Any]) -> str:
    if not servers:
        return "<h2>Servers</h2><p class=note>None: the document was made for the in-process memory:// broker.</p>"
    rows = "".join(
        f"<dt>{escape(name)}</dt><dd><code>{escape(str(server.get('protocol')))}://"
        f"{escape(str(server.get('host')))}{escape(str(server.get('pathname', '')))}</code> "
        f"{escape(str(server.get('description', '')))}</dd>"
        for name, server in servers.items()
    )
    return f"<h2>Servers</h2><dl>{rows}</dl>"


def _contents(operations: Mapping[str, Any]) -> str:
    if not operations:
        return "<h2>Operations</h2><p class=note>This app has no handlers.</p>"
    items = "".join(
        f'<li><a href="#op-{escape(key)}">{escape(str(op.get("title", key)))}</a></li>'
        for key, op in operations.items()
    )
    return f"<h2>Operations</h2><nav><ul>{items}</ul></nav>"


def _operation(doc: Mapping[str, Any], key: str, operation: Mapping[str, Any]) -> str:
    kind = next((tag["name"] for tag in operation.get("tags", []) if ":" not in tag.get("name", ":")), "")
    channel = _resolve(doc, operation.get("channel", {}).get("$ref", ""))
    parts = [
        f'<section class=op id="op-{escape(key)}">',
        f'<h2><span class="kind {escape(kind)}">{escape(kind or str(operation.get("action", "")))}</span>'
        f"{escape(str(operation.get('title', key)))}</h2>",
    ]
    for field in ("summary", "description"):
        if operation.get(field):
            parts.append(f"<p>{escape(str(operation[field]))}</p>")
    facts = [("operation", f"<code>{escape(key)}</code> ({escape(str(operation.get('action')))})")]
    address = channel.get("address")
    facts.append(("channel address", f"<code>{escape(str(address))}</code>" if address is not None else "dynamic"))
    amqp = channel.get("bindings", {}).get("amqp", {})
    if "exchange" in amqp:
        exchange = amqp["exchange"]
        shown = f"<code>{escape(repr(exchange.get('name')))}</code> ({escape(str(exchange.get('type')))})"
        facts.append(("exchange", shown))
    if "queue" in amqp:
        facts.append(("queue", f"<code>{escape(str(amqp['queue'].get('name')))}</code>"))
    for name, value in amqp.items():
        if name.startswith("x-"):
            facts.append((name, _inline_json(value)))
    for name, value in operation.items():
        if name.startswith("x-"):
            facts.append((name, _inline_json(value)))
    operation_amqp = operation.get("bindings", {}).get("amqp")
    if operation_amqp:
        facts.append(("AMQP operation", _inline_json(operation_amqp)))
    parts.append("<dl>" + "".join(f"<dt>{escape(name)}</dt><dd>{value}</dd>" for name, value in facts) + "</dl>")
    if channel.get("description"):
        parts.append(f"<p class=note>{escape(str(channel['description']))}</p>")
    for ref in operation.get("messages", []):
        parts.append(_message(doc, _resolve(doc, ref.get("$ref", ""))))
    reply = operation.get("reply")
    if reply:
        where = reply.get("address", {})
        parts.append(f"<h3>Reply</h3><p>To <code>{escape(str(where.get('location', '')))}</code>: "
                     f"{escape(str(where.get('description', '')))}</p>")
        for ref in reply.get("messages", []):
            parts.append(_message(doc, _resolve(doc, ref.get("$ref", ""))))
    parts.append("</section>")
    return "\n".join(parts)


def _message(doc: Mapping[str, Any], message: Mapping[str, Any]) -> str:
    parts = [f"<h3>Message {escape(str(message.get('title') or message.get('name', '')))}</h3>"]
    if message.get("description"):
        parts.append(f"<p>{escape(str(message['description']))}</p>")
    facts = [("content type", f"<code>{escape(str(message.get('contentType', doc.get('defaultContentType'))))}</code>")]
    correlation = message.get("correlationId", {})
    if "$ref" in correlation:
        correlation = _resolve(doc, correlation["$ref"])
    if correlation.get("location"):
        facts.append(("correlation id", f"<code>{escape(str(correlation['location']))}</code>"))
    parts.append("<dl>" + "".join(f"<dt>{escape(name)}</dt><dd>{value}</dd>" for name, value in facts) + "</dl>")
    if message.get("headers"):
        parts.append(f"<p><b>Headers</b></p>{_schema(message['headers'])}")
    parts.append(f"<p><b>Payload</b></p>{_schema(message.get('payload', {}))}")
    for example in message.get("examples", []):
        if "payload" in example:
            text = json.dumps(example["payload"], indent=2, ensure_ascii=False)
            parts.append(f"<p><b>Example</b></p><pre>{escape(text)}</pre>")
    return "\n".join(parts)


def _schema(schema: Any, depth: int = 0) -> str:
    """A JSON Schema as nested lists: type and constraints, then properties, items and alternatives."""
    if schema is True or schema == {}:
        return "<span class=type>any JSON</span>"
    if not isinstance(schema, Mapping) or depth > _MAX_DEPTH:
        return "<span class=note>…</span>"
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        return f'<a href="#schema-{escape(name)}">{escape(name)}</a>'
    words = []
    kind = schema.get("type")
    if kind is not None:
        words.append(f"<span class=type>{escape(' | '.join(kind) if isinstance(kind, list) else str(kind))}</span>")
    for key in ("title", "format", "pattern", "enum", "const", "default", "minimum", "maximum", "exclusiveMinimum",
                "exclusiveMaximum", "minLength", "maxLength", "minItems", "maxItems"):
        if key in schema and not (key == "title" and depth == 0 and "properties" not in schema):
            words.append(f"{key} <code>{escape(json.dumps(schema[key], ensure_ascii=False))}</code>")
    if schema.get("readOnly"):
        words.append("read-only")
    if schema.get("additionalProperties") is False:
        words.append("no other keys")
    if schema.get("description"):
        words.append(f"<span class=note>{escape(str(schema['description']))}</span>")
    parts = [" · ".join(words) or "<span class=type>any JSON</span>"]
    required = set(schema.get("required", []))
    items = []
    for name, sub in schema.get("properties", {}).items():
        mark = " <span class=req title=required>*</span>" if name in required else ""
        items.append(f"<li><code>{escape(name)}</code>{mark}: {_schema(sub, depth + 1)}</li>")
    extra = schema.get("additionalProperties")
    if isinstance(extra, Mapping):
        items.append(f"<li><i>any key</i>: {_schema(extra, depth + 1)}</li>")
    array_items = schema.get("items")
    if isinstance(array_items, list):
        items.extend(f"<li>item {number}: {_schema(sub, depth + 1)}</li>"
                     for number, sub in enumerate(array_items, 1))
    elif isinstance(array_items, Mapping):
        items.append(f"<li>each item: {_schema(array_items, depth + 1)}</li>")
    for key in ("oneOf", "anyOf", "allOf"):
        for sub in schema.get(key, []):
            items.append(f"<li>{key}: {_schema(sub, depth + 1)}</li>")
    if items:
        parts.append("<ul class=schema>" + "".join(items) + "</ul>")
    return "".join(parts)


def _inline_json(value: Any) -> str:
    return f"<code>{escape(json.dumps(value, ensure_ascii=False))}</code>"


def _resolve(doc: Mapping[str, Any], ref: str) -> Mapping[str, Any]:
    """The object a local ``$ref`` (``#/a/b``) points at, or an empty one."""
    node: Any = doc
    for part in ref.lstrip("#/").split("/") if ref.startswith("#/") else []:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, Mapping) or part not in node:
            return {}
        node = node[part]
    return node if isinstance(node, Mapping) else {}
