"""``otter.asyncapi``: an app's AsyncAPI 3.0 document is valid against the official JSON Schema, describes the real
wire (the names the app's config gives, the envelopes ``protocol`` reads), and its examples are what the app
accepts. The command line (``otter docs``) is tested in tests/test_cli_docs.py."""

from __future__ import annotations

import copy
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from marshmallow import Schema, fields

from apps import asyncapi_app  # tests/ is on the path (as for conftest); apps/ is a namespace package
from otter import Blueprint, Otter, ValidationError, protocol
from otter.asyncapi import document, dumps, render_html
from otter.asyncapi.schemas import ANY_JSON, example_of
from otter.errors import ConfigurationError
from otter.routing import BroadcastRoute, SubjectFilter
from otter.transports.base import Topology

SCHEMA_FILE = Path(__file__).parent / "data" / "asyncapi-3.0.0-without-$id.json"
COMPONENT_KEY = re.compile(r"^[\w\d.\-_]+$")


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return document(asyncapi_app.app, asyncapi_app.app.resolve_config())


def errors(validator: jsonschema.Draft7Validator, doc: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator.iter_errors(doc)]


def pointer(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref":
                yield item
            else:
                yield from refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from refs(item)


def payload_validator(doc: dict[str, Any], schema: Any) -> jsonschema.Draft7Validator:
    """A validator of one payload schema whose ``#/components/...`` references resolve in ``doc``."""
    return jsonschema.Draft7Validator({**schema, "components": doc.get("components", {})} if isinstance(schema, dict)
                                      else schema)


# -- the document is valid AsyncAPI 3.0 ---------------------------------------------------------------------------
def test_the_document_is_valid_asyncapi_3(validator: jsonschema.Draft7Validator, doc: dict[str, Any]) -> None:
    assert doc["asyncapi"] == "3.0.0"
    assert errors(validator, doc) == []


@pytest.mark.parametrize("app", [Otter("empty"), Otter("seedlike")], ids=["no handlers", "seed app"])
def test_small_apps_are_valid_too(validator: jsonschema.Draft7Validator, app: Otter) -> None:
    if app.name == "seedlike":
        app.add_broadcast(["message.*"])(lambda comm, body, sender, subject, correlation_id: None)
        app.add_task("example.task")(lambda comm, delay: None)
        app.add_rpc("example.hash")(lambda comm, data: {"result": data})
    doc = document(app, app.resolve_config("memory://"))
    assert errors(validator, doc) == []
    assert len(doc["operations"]) == len(app.routes) + (1 if app.routes else 0)  # + the default queue's task


@pytest.mark.parametrize("breakage", [
    lambda d: d["info"].pop("version"),
    lambda d: d["operations"]["rpc.echo"].update(action="consume"),
    lambda d: d["channels"]["task.mail.send"]["bindings"]["amqp"].update(is_="queue", exchange={"name": "x"}),
    lambda d: d["operations"]["rpc.echo"]["reply"]["address"].update(location="reply_to"),
    lambda d: d["channels"]["rpc.echo"]["bindings"]["amqp"]["exchange"].update(type="fanin"),
])
def test_the_validation_would_catch_a_broken_document(
    validator: jsonschema.Draft7Validator, doc: dict[str, Any], breakage: Any
) -> None:
    broken = copy.deepcopy(doc)
    breakage(broken)
    assert errors(validator, broken) != []


def test_every_reference_resolves_and_operations_use_their_channels_messages(doc: dict[str, Any]) -> None:
    for ref in refs(doc):
        assert pointer(doc, ref) is not None, ref
    for key, operation in doc["operations"].items():
        channel_ref = operation["channel"]["$ref"]
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel_ref + "/messages/"), (key, message)
        if "reply" in operation:
            for message in operation["reply"]["messages"]:
                assert message["$ref"].startswith(operation["reply"]["channel"]["$ref"] + "/messages/")
    for group in doc["components"].values():
        assert all(COMPONENT_KEY.match(name) for name in group), list(group)


def test_json_and_yaml_say_the_same(doc: dict[str, Any]) -> None:
    assert json.loads(dumps(doc, "json")) == doc
    assert yaml.safe_load(dumps(doc, "yaml")) == doc
    assert dumps(doc, "yaml").startswith("asyncapi: 3.0.0\n")
    with pytest.raises(ValueError, match="yaml, json"):
        dumps(doc, "xml")


# -- it describes the real wire -----------------------------------------------------------------------------------
def test_rpc_channels_name_the_exchange_routing_key_and_shared_queue(doc: dict[str, Any]) -> None:
    topology = Topology.from_config(asyncapi_app.app.resolve_config())
    channel = doc["channels"]["rpc.orders.place"]
    assert channel["address"] == "[rpc].orders.place" == protocol.rpc_routing_key("orders.place")
    amqp = channel["bindings"]["amqp"]
    assert amqp["is"] == "routingKey"
    assert amqp["exchange"] == {"name": "shop.messages", "type": "topic", "durable": False, "autoDelete": False,
                                "vhost": "shop"}
    assert amqp["x-otter-queue"]["name"] == "shop.rpc.orders.place" == topology.rpc_queue("orders.place")
    assert amqp["x-otter-queue"]["arguments"] == protocol.RPC_QUEUE_ARGUMENTS
    assert (amqp["x-otter-queue"]["autoDelete"], amqp["x-otter-queue-type"]) == (True, "classic")
    request = channel["messages"]["request"]
    assert request["contentType"] == protocol.CONTENT_TYPE
    assert pointer(doc, request["correlationId"]["$ref"])["location"] == "$message.header#/correlation_id"
    headers = pointer(doc, request["headers"]["$ref"])
    assert protocol.DEADLINE_HEADER in headers["properties"]
    operation = doc["operations"]["rpc.orders.place"]
    assert operation["action"] == "receive"
    assert operation["summary"] == "Place an order."
    assert operation["reply"]["address"]["location"] == "$message.header#/reply_to"
    assert doc["channels"]["rpc-replies"]["address"] is None


def test_reply_examples_are_replies_an_otter_caller_reads(doc: dict[str, Any]) -> None:
    replies = doc["channels"]["rpc-replies"]["messages"]
    result = replies["result"]["examples"][0]["payload"]
    assert protocol.raise_for_reply(result) == {"ok": True}
    error = replies["error"]["examples"][0]["payload"]
    with pytest.raises(ValidationError) as raised:
        protocol.raise_for_reply(error)
    assert raised.value.messages == {"email": ["Not a valid email address."]}
    for message, example in ((replies["result"], result), (replies["error"], error)):
        assert list(payload_validator(doc, pointer(doc, message["payload"]["$ref"])).iter_errors(example)) == []
    # one and only one reply message fits each reply, as AsyncAPI requires of a channel's messages
    result_schema = payload_validator(doc, pointer(doc, replies["result"]["payload"]["$ref"]))
    assert not result_schema.is_valid(error)
    assert not payload_validator(doc, pointer(doc, replies["error"]["payload"]["$ref"])).is_valid(result)


def test_task_channels_are_their_queues_with_the_arguments_the_worker_declares(doc: dict[str, Any]) -> None:
    topology = Topology.from_config(asyncapi_app.app.resolve_config())
    classic = doc["channels"]["task.mail.send"]["bindings"]["amqp"]
    assert classic["is"] == "queue" and classic["queue"]["name"] == "mail.send" and classic["queue"]["durable"]
    assert classic["x-otter-queue-type"] == "classic"
    assert classic["x-otter-queue-arguments"] == topology.task_queue_arguments("classic")
    assert classic["x-otter-queue-arguments"]["x-message-ttl"] == 3_600_000  # TASK_MESSAGE_TTL=3600
    assert classic["x-otter-exchange"] == {"name": "shop.tasks", "type": "topic", "routingKey": "mail.send"}
    quorum = doc["channels"]["task.reports.build"]["bindings"]["amqp"]
    assert quorum["x-otter-queue-arguments"] == topology.task_queue_arguments("quorum")
    assert quorum["x-otter-queue-arguments"]["x-queue-type"] == "quorum"
    assert doc["operations"]["task.reports.build"]["x-otter-max-retries"] == 3
    assert doc["operations"]["task.reports.build"]["x-otter-dead-letter-queue"] == "shop.dead"
    # nameless tasks: the default queue, handled by the task marked default=True
    default = doc["channels"]["task.shop.default"]
    assert default["address"] == "shop.default"
    assert default["messages"]["task"]["payload"] == doc["channels"]["task.mail.send"]["messages"]["task"]["payload"]
    assert doc["operations"]["task.shop.default"]["x-otter-handler"].endswith("send_mail")
    for key in ("task.mail.send", "task.reports.build", "task.shop.default"):
        example = doc["channels"][key]["messages"]["task"]["examples"][0]["payload"]
        _, no_reply = protocol.read_task(example)
        assert no_reply is True
        assert payload_validator(doc, doc["channels"][key]["messages"]["task"]["payload"]).is_valid(example)


def test_broadcast_subjects_are_documented_by_the_matchers_own_rule(doc: dict[str, Any]) -> None:
    routes = [route for route in asyncapi_app.app.routes if isinstance(route, BroadcastRoute)]
    keys = {"orders.*,audit.#": "broadcast.on_order_event", "accounts.#": "broadcast.accounts.on_account_event"}
    for route in routes:
        channel = doc["channels"][keys[route.name]]
        assert channel["address"] == protocol.BROADCAST_ROUTING_KEY
        assert channel["bindings"]["amqp"]["exchange"]["name"] == "shop.messages"
        message = channel["messages"]["broadcast"]
        check = payload_validator(doc, message["payload"])
        for subject in ("orders.new", "orders", "orders.a.b", "audit", "audit.x.y", "accounts", "accounts.closed",
                        "xorders.new", "", None):
            envelope = {"body": 1, "sender": None, "subject": subject, "correlation_id": None}
            assert check.is_valid(envelope) is route.matches(subject), (route.name, subject)
        example = message["examples"][0]["payload"]
        assert route.matches(protocol.read_broadcast(example).subject)
        assert doc["operations"][keys[route.name]]["x-otter-subject-filters"] == [f.pattern for f in route.filters]


@pytest.mark.parametrize("pattern", ["a-b.c+d", "x/y.*.z", "(a).[b].#", "a$.^b|c", "#.e{1}"])
def test_filter_regexes_mean_the_same_in_json_schema(pattern: str) -> None:
    subject_filter = SubjectFilter(pattern)
    check = jsonschema.Draft7Validator({"type": "string", "pattern": f"^(?:{subject_filter.regex})$"})
    for subject in (pattern, pattern.replace("*", "w").replace("#", "w.v"), "a-b.c+d", "x/y.q.z", "(a).[b]",
                    "a$.^b|c", "q.e{1}", "a-b.cd", "x/y.z", "ab.c"):
        assert check.is_valid(subject) is subject_filter.matches(subject), subject
    assert "\\-" not in subject_filter.regex  # an ECMA regex in unicode mode refuses the escape re.escape would add


def test_blueprint_routes_carry_their_prefix_and_blueprint(doc: dict[str, Any]) -> None:
    assert doc["channels"]["rpc.accounts.login"]["address"] == "[rpc].accounts.login"
    operation = doc["operations"]["rpc.accounts.login"]
    assert operation["x-otter-blueprint"] == "accounts"
    assert {"name": "blueprint:accounts"} in operation["tags"]
    assert operation["summary"] == "Log a user in <and> return a token."


def test_the_effective_config_names_the_wire(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTTER_RPC_QUEUE_PREFIX", "env.rpc.")
    monkeypatch.setenv("OTTER_TASK_QUEUE_TYPE", "quorum")
    monkeypatch.setenv("OTTER_RPC_QUEUE_TYPE", "quorum")
    doc = document(asyncapi_app.app)  # the app's effective config: OTTER_* outranks app.config
    rpc_queue = doc["channels"]["rpc.echo"]["bindings"]["amqp"]["x-otter-queue"]
    assert rpc_queue["name"] == "env.rpc.echo"
    assert (rpc_queue["autoDelete"], rpc_queue["arguments"]) == (False, protocol.rpc_queue_arguments("quorum")[1])
    assert doc["channels"]["rpc.echo"]["bindings"]["amqp"]["x-otter-queue-type"] == "quorum"
    assert doc["channels"]["task.mail.send"]["bindings"]["amqp"]["x-otter-queue-type"] == "quorum"


def test_servers_come_from_the_broker_url_without_credentials(doc: dict[str, Any]) -> None:
    assert doc["servers"] == {"broker": {
        "host": "rabbit.internal:5673", "pathname": "/shop", "protocol": "amqp", "protocolVersion": "0.9.1",
        "title": "RabbitMQ", "description": doc["servers"]["broker"]["description"]}}
    assert "hunter2" not in json.dumps(doc) and "svc" not in json.dumps(doc["servers"])
    several = document(asyncapi_app.app, {**asyncapi_app.app.resolve_config(),
                                          "BROKER_URL": "amqps://a:b@n1/;amqps://a:b@[::1]:5671/%2f"})
    assert [(s["host"], s["protocol"], s["pathname"]) for s in several["servers"].values()] == [
        ("n1", "amqps", "/"), ("[::1]:5671", "amqps", "/")]
    assert "servers" not in document(asyncapi_app.app, {**asyncapi_app.app.resolve_config(), "BROKER_URL": "memory://"})


# -- payload schemas from @use_args -------------------------------------------------------------------------------
def test_use_args_schemas_become_payload_schemas_with_nested_components(doc: dict[str, Any]) -> None:
    payload = doc["channels"]["rpc.orders.place"]["messages"]["request"]["payload"]
    assert payload["title"] == "OrderSchema"
    assert sorted(payload["required"]) == ["email", "items", "ship_to"]
    assert payload["additionalProperties"] is False  # use_args refuses unknown fields
    assert payload["properties"]["email"] == {"type": "string", "format": "email"}
    assert payload["properties"]["ship_to"] == {"$ref": "#/components/schemas/Address"}
    assert payload["properties"]["items"]["items"] == {"$ref": "#/components/schemas/Item"}
    assert payload["properties"]["channel"]["enum"] == ["web", "shop"]
    schemas = doc["components"]["schemas"]
    assert sorted(schemas["Address"]["required"]) == ["city", "street"]
    assert schemas["Address"]["properties"]["zip"]["type"] == ["string", "null"]
    assert schemas["Item"]["properties"]["quantity"] == {"type": "integer", "minimum": 1, "maximum": 100}
    tree = doc["channels"]["rpc.orders.tree"]["messages"]["request"]["payload"]  # a schema that nests itself
    assert tree["properties"]["children"]["items"] == {"$ref": "#/components/schemas/Tree"}
    dict_schema = doc["channels"]["rpc.accounts.login"]["messages"]["request"]["payload"]
    assert "title" not in dict_schema and sorted(dict_schema["required"]) == ["password", "user"]
    assert dict_schema["properties"]["password"]["minLength"] == 8


def test_handlers_without_use_args_take_any_json(doc: dict[str, Any]) -> None:
    payload = doc["channels"]["rpc.echo"]["messages"]["request"]["payload"]
    assert payload == ANY_JSON
    check = payload_validator(doc, payload)
    assert all(check.is_valid(value) for value in (None, 1, "x", [1, {"a": 2}], {"b": [None]}))


def test_every_example_is_valid_and_accepted_by_its_handler(doc: dict[str, Any]) -> None:
    """The examples are generated from the schemas; each validates against its payload schema, and a @use_args
    handler's schema loads it, so the page shows arguments the service really accepts."""
    schemas = {f"rpc.{r.name}" if r.kind == "rpc" else f"task.{r.name}": r.schema
               for r in asyncapi_app.app.routes if r.schema is not None and r.kind != "broadcast"}
    checked = 0
    for key, channel in doc["channels"].items():
        for message in channel["messages"].values():
            payload = message["payload"]
            if "$ref" in payload:
                payload = pointer(doc, payload["$ref"])
            example = message["examples"][0]["payload"]
            assert list(payload_validator(doc, payload).iter_errors(example)) == [], key
            if key in schemas:
                data = example if key.startswith("rpc.") else example[0]
                schemas[key].load(data)  # raises marshmallow.ValidationError if the handler would refuse it
                checked += 1
    assert checked == len(schemas) == 4


def test_example_of_bounds_recursion_and_follows_refs() -> None:
    node = {"type": "object", "properties": {"next": {"$ref": "#/components/schemas/Node"}}}
    assert example_of({"$ref": "#/components/schemas/Node"}, {"Node": node}) == {}  # an optional loop is left out
    required = {**node, "required": ["next"]}  # a schema no finite value satisfies still ends
    value = example_of({"$ref": "#/components/schemas/Node"}, {"Node": required})
    depth = 0
    while isinstance(value, dict):
        value, depth = value["next"], depth + 1
    assert 2 < depth < 10
    assert example_of({"type": "integer", "exclusiveMinimum": 5}, {}) == 6
    assert example_of({"type": ["null", "string"], "format": "date"}, {}) == "2026-01-01"


def test_a_schema_without_apispec_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "apispec", None)  # as if it were not installed
    with pytest.raises(ConfigurationError, match=r"apispec.*pip install 'otter-mq\[docs\]'"):
        document(asyncapi_app.app, asyncapi_app.app.resolve_config())
    plain = Otter("plain")
    plain.add_rpc("echo")(lambda comm, data: data)
    assert document(plain, plain.resolve_config("memory://"))["operations"]  # no schema, no apispec needed


def test_names_that_are_not_component_keys_are_made_safe(validator: jsonschema.Draft7Validator) -> None:
    app = Otter("odd")
    bp = Blueprint("b")

    class WeirdSchema(Schema):
        x = fields.Int()

    app.add_rpc("svc:a/b@c")(lambda comm, data: data)
    app.add_rpc("svc_a_b_c")(lambda comm, data: data)
    bp.add_rpc("w")(lambda comm, data: data)
    app.register_blueprint(bp, name_prefix="p")
    doc = document(app, app.resolve_config("memory://"))
    assert errors(validator, doc) == []
    assert {"rpc.svc_a_b_c", "rpc.svc_a_b_c-2", "rpc.p.w"} <= set(doc["channels"])
    assert doc["channels"]["rpc.svc_a_b_c"]["address"] == "[rpc].svc:a/b@c"


# -- the page -------------------------------------------------------------------------------------------------------
def test_the_page_lists_every_operation_with_channel_schema_and_example(doc: dict[str, Any]) -> None:
    page = render_html(doc)
    for key, operation in doc["operations"].items():
        assert f'id="op-{key}"' in page
        assert operation["title"].replace("#", "#") in page
    assert "<code>[rpc].orders.place</code>" in page
    assert 'href="#schema-Address"' in page and 'id="schema-Address"' in page
    assert "user@example.com" in page  # an example payload
    assert "Log a user in &lt;and&gt; return a token." in page and "<and>" not in page  # text is escaped
    assert "<script" not in page
    hrefs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert hrefs and all(h.startswith("#") for h in hrefs), hrefs
    assert 'href="asyncapi.json"' in render_html(doc, downloads=True)
