"""An app's AsyncAPI 3.0 document: every RPC, task queue and broadcast filter as they travel on RabbitMQ.

Nothing here is declared twice: addresses, exchanges, queues and queue arguments come from the app's effective
config through ``Topology``, the object the AMQP transport declares them with; the payloads are kiwipy's envelopes
as ``protocol`` builds them, around the handlers' ``@use_args`` schemas; subject filters are documented by the
regular expression the worker matches them with. docs/cli.md ("AsyncAPI documents") says how
Otter's wire maps onto AsyncAPI.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from .. import protocol
from ..errors import ValidationError
from ..retry import RetryPolicy
from ..routing import BroadcastRoute, Route, RpcRoute, SubjectFilter, TaskRoute
from ..transports.base import Topology
from .schemas import ANY_JSON, COMPONENT_KEY, SchemaConverter, example_of

if TYPE_CHECKING:
    from ..app import Otter

__all__ = ["ASYNCAPI_VERSION", "document"]

ASYNCAPI_VERSION = "3.0.0"
AMQP_BINDING = "0.3.0"  # the AMQP bindings version the AsyncAPI 3.0.0 schema knows
REPLIES = "rpc-replies"  # no route's key starts like this: theirs are rpc.<name>, task.<queue>, broadcast.<handler>

# Where the AMQP properties are read; AsyncAPI's runtime expressions name them as headers, as its own RabbitMQ RPC
# examples do (the AMQP bindings have no place for message properties).
CORRELATION_ID = {
    "location": "$message.header#/correlation_id",
    "description": "The AMQP correlation_id property. An RPC reply carries its request's.",
}
REPLY_ADDRESS = {
    "location": "$message.header#/reply_to",
    "description": "The request's AMQP reply_to property: the caller's reply queue. The reply is published to the "
    "default exchange with that queue's name as the routing key.",
}
TRACEPARENT = {"type": "string", "description": "W3C trace context; the handler's span becomes a child of it."}
SHARED_SCHEMAS: dict[str, Any] = {
    "OtterRpcHeaders": {
        "type": "object",
        "description": "Headers of an RPC request. Besides Otter's, the caller's own (client.rpc(..., headers=...)) "
        "reach the handler as ctx.headers.",
        "properties": {
            protocol.DEADLINE_HEADER: {
                "type": "integer",
                "minimum": 0,
                "description": "When the caller gives up, in integer milliseconds since the Unix epoch. A request "
                "whose deadline has passed is dropped without running; a request without it (kiwipy's) always runs.",
            },
            "traceparent": TRACEPARENT,
        },
    },
    "OtterTaskHeaders": {
        "type": "object",
        "description": "Headers of a task. Besides Otter's, the sender's own reach the handler and are kept by "
        "retries and dead letters.",
        "properties": {
            protocol.ATTEMPTS_HEADER: {
                "type": "integer",
                "minimum": 0,
                "maximum": protocol.MAX_ATTEMPTS,
                "description": "How many runs of this task failed so far (absent: none); set on a retry's copy.",
            },
            "traceparent": TRACEPARENT,
        },
    },
    "OtterResultReply": {
        "type": "object",
        "description": "The reply to a call whose handler returned.",
        "required": [protocol.RESULT_KEY],
        "additionalProperties": False,
        "properties": {protocol.RESULT_KEY: {"description": "The handler's return value, as JSON."}},
    },
    "OtterErrorReply": {
        "type": "object",
        "description": "The reply to a call whose handler raised or whose request could not be read: kiwipy's "
        "`exception` string (a kiwipy caller raises RemoteException) and Otter's structured `error` (an Otter "
        "caller raises RemoteError, or ValidationError with the field messages).",
        "required": [protocol.EXCEPTION_KEY, protocol.ERROR_KEY],
        "additionalProperties": False,
        "properties": {
            protocol.EXCEPTION_KEY: {"type": "string", "description": "`<type>: <message>`"},
            protocol.ERROR_KEY: {
                "type": "object",
                "required": ["type", "message", "details", "traceback"],
                "properties": {
                    "type": {"type": "string", "description": "The exception's class name."},
                    "message": {"type": "string"},
                    "details": {
                        "description": "null, except {\"messages\": {field: [errors]}} for a ValidationError and a "
                        "nested call's RemoteError details."
                    },
                    "traceback": {
                        "type": ["string", "null"],
                        "description": "The remote traceback when the worker runs with DEBUG, else null.",
                    },
                },
            },
        },
    },
}


def document(app: Otter, config: Mapping[str, Any] | None = None, *, version: str = "0.0.0") -> dict[str, Any]:
    """The AsyncAPI 3.0 document of ``app`` as a dict (JSON-ready), for ``config`` (default: the app's effective
    config, as ``otter run`` would resolve it). ``version`` is the document's ``info.version``.

    >>> doc = document(app)
    >>> doc["operations"]["rpc.example.hash"]["action"]
    'receive'
    """
    return _Builder(app, config if config is not None else app.resolve_config(), version).build()


class _Builder:
    def __init__(self, app: Otter, config: Mapping[str, Any], version: str) -> None:
        self.app = app
        self.config = config
        self.version = version
        self.topology = Topology.from_config(config)
        self.servers, self.vhost = _servers(str(config.get("BROKER_URL") or ""))
        self.schemas = SchemaConverter()
        self.channels: dict[str, Any] = {}
        self.operations: dict[str, Any] = {}

    def build(self) -> dict[str, Any]:
        default_queue = self.topology.default_task_queue
        queues = self.app.task_queues(default_queue)
        for route in self.app.routes:
            if isinstance(route, RpcRoute):
                self._rpc(route)
            elif isinstance(route, TaskRoute):
                for queue, owner in queues.items():
                    if owner is route:
                        self._task(route, queue, default=queue == default_queue and queue != route.name)
            elif isinstance(route, BroadcastRoute):
                self._broadcast(route)
        if any(isinstance(route, RpcRoute) for route in self.app.routes):
            self.channels[REPLIES] = self._replies_channel()
        shared = {name: schema for name, schema in SHARED_SCHEMAS.items() if self._uses(name)}
        nested = self.schemas.components()
        doc: dict[str, Any] = {
            "asyncapi": ASYNCAPI_VERSION,
            "info": self._info(),
            "defaultContentType": protocol.CONTENT_TYPE,
        }
        if self.servers:
            doc["servers"] = self.servers
        doc["channels"] = self.channels
        doc["operations"] = self.operations
        components: dict[str, Any] = {}
        if shared or nested:
            components["schemas"] = {**nested, **shared}
        if self.channels:
            components["correlationIds"] = {"amqp": CORRELATION_ID}
        if components:
            doc["components"] = components
        return doc

    # -- the parts -----------------------------------------------------------------------------------------------
    def _info(self) -> dict[str, Any]:
        from .. import __version__

        counts = Counter(route.kind for route in self.app.routes)
        rpcs, tasks, broadcasts = counts["rpc"], counts["task"], counts["broadcast"]
        where = "" if self.servers else (
            " It was generated for the in-process memory:// broker; set BROKER_URL (or --broker) for the servers.")
        return {
            "title": self.app.name,
            "version": self.version,
            "description": (
                f"The Otter service {self.app.name!r}: {rpcs} RPC(s), {tasks} task handler(s) and {broadcasts} "
                f"broadcast handler(s), on kiwipy's wire protocol (exchanges, routing keys and envelopes), so kiwipy "
                f"programs can call it too. Generated by Otter {__version__} from the app's routes and config." + where
            ),
            "x-otter-version": __version__,
        }

    def _rpc(self, route: RpcRoute) -> None:
        key = self._key("rpc." + route.name)
        payload = self._payload(route)
        request = self._message(
            f"rpc.{route.name}.request", f"Request to {route.name}", payload, "OtterRpcHeaders",
            "The JSON of the call's argument, nothing around it: client.rpc(name, data) sends data.",
        )
        queue = self.topology.rpc_queue(route.name)
        queue_type = self.topology.rpc_queue_type
        auto_delete, arguments = protocol.rpc_queue_arguments(queue_type)
        shape = "durable, auto-delete, x-expires" if auto_delete else "durable, quorum, x-expires"
        self.channels[key] = {
            "address": protocol.rpc_routing_key(route.name),
            "title": f"RPC {route.name}",
            "description": (
                f"Requests are published to the topic exchange {self.topology.message_exchange!r} with the routing "
                f"key {protocol.rpc_routing_key(route.name)!r}; every replica serving {route.name!r} consumes the "
                f"one shared queue {queue!r} ({shape}), so each call runs once. A request "
                f"expires (AMQP expiration) when the caller's deadline passes."
            ),
            "messages": {"request": request},
            "bindings": {"amqp": {
                **self._exchange_binding(self.topology.message_exchange),
                "x-otter-queue": {"name": queue, "durable": True, "exclusive": False, "autoDelete": auto_delete,
                                  "arguments": dict(arguments)},
                "x-otter-queue-type": queue_type,
            }},
        }
        self.operations[key] = {
            **self._operation_head(route, key, "request", f"Serve the RPC {route.name}"),
            "reply": {
                "address": REPLY_ADDRESS,
                "channel": {"$ref": f"#/channels/{REPLIES}"},
                "messages": [{"$ref": f"#/channels/{REPLIES}/messages/result"},
                             {"$ref": f"#/channels/{REPLIES}/messages/error"}],
            },
            "bindings": {"amqp": {"ack": True, "deliveryMode": 1, "mandatory": True, "bindingVersion": AMQP_BINDING}},
            **self._handler_extensions(route),
        }

    def _replies_channel(self) -> dict[str, Any]:
        invalid = ValidationError({"email": ["Not a valid email address."]})
        error_example = protocol.error_reply(invalid)
        result = {
            "name": "rpc.reply.result",
            "title": "Result",
            "contentType": protocol.CONTENT_TYPE,
            "correlationId": {"$ref": "#/components/correlationIds/amqp"},
            "payload": {"$ref": "#/components/schemas/OtterResultReply"},
            "examples": [{"name": "result", "payload": protocol.result_reply({"ok": True})}],
        }
        error = {
            "name": "rpc.reply.error",
            "title": "Error",
            "contentType": protocol.CONTENT_TYPE,
            "correlationId": {"$ref": "#/components/correlationIds/amqp"},
            "payload": {"$ref": "#/components/schemas/OtterErrorReply"},
            "examples": [{"name": "validation-error", "payload": error_example}],
        }
        return {
            "address": None,
            "title": "RPC replies",
            "description": (
                "The reply to every RPC, sent to the reply queue named in its request's reply_to (dynamic, hence no "
                "address): published to the default exchange (\"\") with that name as the routing key, transient, "
                "unconfirmed and not mandatory. A reply whose caller has gone is dropped by the broker."
            ),
            "messages": {"result": result, "error": error},
            "bindings": {"amqp": {
                "is": "routingKey",
                "exchange": {"name": "", "type": "default", "durable": True, "autoDelete": False, **self._vhost()},
                "bindingVersion": AMQP_BINDING,
            }},
        }

    def _task(self, route: TaskRoute, queue: str, *, default: bool) -> None:
        key = self._key("task." + queue)
        body = self._payload(route)
        payload = {
            "type": "array",
            "description": "kiwipy's task body: [task, no_reply].",
            "items": [body, {"type": "boolean", "description": "no_reply: Otter senders always send true; a kiwipy "
                                                               "sender's false asks for an RPC-style reply."}],
            "minItems": 2,
            "maxItems": 2,
            "additionalItems": False,
        }
        example = [example_of(body, self.schemas.components()), True]
        message = self._message(f"task.{queue}", f"Task {route.name}" + (" (nameless)" if default else ""),
                                payload, "OtterTaskHeaders", None, example=example)
        queue_type = route.queue_type or self.topology.task_queue_type
        arguments = self.topology.task_queue_arguments(queue_type, route.options.get("max_priority"))
        if default:
            who = ("shared by the replicas of this service (add_task(default=True))" if route.is_default
                   else "held by one worker with an exclusive consumer (the app's only task handler)")
            about = (f"The default task queue: nameless tasks (client.task(body), kiwipy's task_send) go here and "
                     f"are handled by {route.name!r}; its consumer is {who}.")
        else:
            about = f"The queue of the task {route.name!r}."
        self.channels[key] = {
            "address": queue,
            "title": f"Task queue {queue}",
            "description": (
                f"{about} A durable {queue_type} queue; Otter senders publish persistent messages through the default "
                f"exchange with the queue's name as the routing key, kiwipy senders through the topic exchange "
                f"{self.topology.task_exchange!r} (the queue is bound to it under its own name)."
            ),
            "messages": {"task": message},
            "bindings": {"amqp": {
                "is": "queue",
                "queue": {"name": queue, "durable": True, "exclusive": False, "autoDelete": False, **self._vhost()},
                "bindingVersion": AMQP_BINDING,
                "x-otter-queue-type": queue_type,
                "x-otter-queue-arguments": arguments,
                "x-otter-exchange": {"name": self.topology.task_exchange, "type": "topic", "routingKey": queue},
            }},
        }
        policy = RetryPolicy.for_task(route.options, self.config)
        retries = (f"a failing run is retried up to {policy.max_retries} time(s), backoff {policy.backoff:g}s "
                   f"doubling up to {policy.backoff_max:g}s, then" if policy.max_retries else "a failing run is")
        self.operations[key] = {
            **self._operation_head(
                route, key, "task", f"Run the task {route.name}" + (" (nameless tasks)" if default else ""),
                f"At-least-once: acked after the handler returns; {retries} dead-lettered into "
                f"{self.topology.dead_letter_queue!r} with the reason; a task that cannot be read goes there at once.",
            ),
            "bindings": {"amqp": {"ack": True, "deliveryMode": 2, "mandatory": True, "bindingVersion": AMQP_BINDING}},
            "x-otter-max-retries": policy.max_retries,
            "x-otter-dead-letter-queue": self.topology.dead_letter_queue,
            **self._handler_extensions(route),
        }

    def _broadcast(self, route: BroadcastRoute) -> None:
        handler_name = getattr(route.handler, "__name__", None) or type(route.handler).__name__
        key = self._key(".".join(["broadcast", *([route.blueprint] if route.blueprint else []), handler_name]))
        body = self._payload(route)
        filters = [f.pattern for f in route.filters]
        subject = {
            "type": "string",
            "pattern": "^(?:" + "|".join(f.regex for f in route.filters) + ")$",
            "description": f"Matches one of the filters {', '.join(filters)} (AMQP topic rules: '*' one word, "
            f"'#' zero or more, whole subject). A broadcast without a subject reaches no handler.",
        }
        payload = {
            "type": "object",
            "description": "kiwipy's broadcast envelope.",
            "required": ["body", "subject"],
            "properties": {
                "body": body,
                "sender": {"description": "Who sent it (any JSON; Otter's client sends null unless given sender=)."},
                "subject": subject,
                "correlation_id": {"description": "The broadcast's correlation id (any JSON, often null); it "
                                                  "travels only in the body."},
            },
        }
        example = {"body": example_of(body, self.schemas.components()), "sender": None,
                   "subject": _example_subject(route.filters), "correlation_id": None}
        message = self._message(f"{key}.broadcast", f"Broadcast to {', '.join(filters)}", payload, None, None,
                                example=example)
        self.channels[key] = {
            "address": protocol.BROADCAST_ROUTING_KEY,
            "title": f"Broadcasts matching {', '.join(filters)}",
            "description": (
                f"Every broadcast is published to the topic exchange {self.topology.message_exchange!r} with the "
                f"routing key {protocol.BROADCAST_ROUTING_KEY!r}, and every worker process receives all of them on "
                f"one exclusive, server-named queue; the subject travels in the body, and the worker runs this "
                f"handler for the subjects its filters match. Other handlers' broadcasts share this address."
            ),
            "messages": {"broadcast": message},
            "bindings": {"amqp": {
                **self._exchange_binding(self.topology.message_exchange),
                "x-otter-queue": {"name": "amq_<hex> (named by the worker, one per worker process)", "durable": False,
                                  "exclusive": True, "autoDelete": False,
                                  "arguments": dict(protocol.BROADCAST_QUEUE_ARGUMENTS)},
            }},
        }
        self.operations[key] = {
            **self._operation_head(route, key, "broadcast", f"Receive broadcasts matching {', '.join(filters)}",
                                   "At-most-once, to every subscribing process; a handler error is logged and the "
                                   "other handlers still run."),
            "bindings": {"amqp": {"ack": True, "deliveryMode": 1, "mandatory": False, "bindingVersion": AMQP_BINDING}},
            "x-otter-subject-filters": filters,
            **self._handler_extensions(route),
        }

    # -- helpers -------------------------------------------------------------------------------------------------
    def _payload(self, route: Route) -> dict[str, Any]:
        schema = route.schema
        if schema is None:
            return dict(ANY_JSON)
        converted = self.schemas.convert(schema, f"{route.kind} {route.name!r}")
        name = type(schema).__name__
        if name != "UseArgsSchema":
            converted.setdefault("title", name)
        return converted

    def _message(self, name: str, title: str, payload: dict[str, Any], headers: str | None,
                 description: str | None, example: Any = None) -> dict[str, Any]:
        if example is None:
            example = example_of(payload, self.schemas.components())
        message: dict[str, Any] = {"name": name, "title": title, "contentType": protocol.CONTENT_TYPE}
        if description:
            message["description"] = description
        message["correlationId"] = {"$ref": "#/components/correlationIds/amqp"}
        if headers:
            message["headers"] = {"$ref": f"#/components/schemas/{headers}"}
        message["payload"] = payload
        message["examples"] = [{"name": "example", "payload": example}]
        return message

    def _operation_head(self, route: Route, key: str, message: str, title: str,
                        description: str | None = None) -> dict[str, Any]:
        head: dict[str, Any] = {"action": "receive", "channel": {"$ref": f"#/channels/{key}"}, "title": title}
        doc = inspect.getdoc(route.handler)
        if doc:
            head["summary"] = doc.strip().splitlines()[0]
        if description:
            head["description"] = description
        head["tags"] = [{"name": route.kind}] + ([{"name": f"blueprint:{route.blueprint}"}] if route.blueprint else [])
        head["messages"] = [{"$ref": f"#/channels/{key}/messages/{message}"}]
        return head

    def _handler_extensions(self, route: Route) -> dict[str, Any]:
        handler = route.handler
        name = getattr(handler, "__qualname__", None) or type(handler).__qualname__
        return {"x-otter-handler": f"{getattr(handler, '__module__', '?')}.{name}",
                "x-otter-async": route.is_async,
                **({"x-otter-blueprint": route.blueprint} if route.blueprint else {})}

    def _exchange_binding(self, exchange: str) -> dict[str, Any]:
        # Declared exactly as kiwipy declares it: topic, not durable, not auto-delete (docs/protocol.md).
        return {"is": "routingKey",
                "exchange": {"name": exchange, "type": "topic", "durable": False, "autoDelete": False,
                             **self._vhost()},
                "bindingVersion": AMQP_BINDING}

    def _vhost(self) -> dict[str, str]:
        return {"vhost": self.vhost} if self.vhost is not None else {}

    def _key(self, text: str) -> str:
        key = base = COMPONENT_KEY.sub("_", text)
        number = 1
        while key in self.channels or key == REPLIES:
            number += 1
            key = f"{base}-{number}"
        return key

    def _uses(self, schema: str) -> bool:
        return f"#/components/schemas/{schema}" in set(_refs(self.channels))


def _refs(value: Any) -> Iterator[str]:
    """Every ``$ref`` in ``value``, however deep."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key == "$ref" and isinstance(item, str):
                yield item
            else:
                yield from _refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)


def _servers(url: str) -> tuple[dict[str, Any], str | None]:
    """The servers of ``BROKER_URL`` (each of a ``;``-separated list), without credentials, and the vhost."""
    servers: dict[str, Any] = {}
    vhost: str | None = None
    parts = [part.strip() for part in url.split(";") if part.strip()]
    for number, part in enumerate(parts, 1):
        split = urlsplit(part)
        if split.scheme not in ("amqp", "amqps") or not split.hostname:
            continue
        host = f"[{split.hostname}]" if ":" in split.hostname else split.hostname
        if split.port:
            host += f":{split.port}"
        server_vhost = unquote(split.path[1:]) if len(split.path) > 1 else "/"
        vhost = vhost or server_vhost
        servers["broker" if len(parts) == 1 else f"broker{number}"] = {
            "host": host,
            "pathname": server_vhost if server_vhost.startswith("/") else "/" + server_vhost,
            "protocol": split.scheme,
            "protocolVersion": "0.9.1",
            "title": "RabbitMQ",
            "description": f"RabbitMQ from BROKER_URL (virtual host {server_vhost!r}); credentials are not shown."
            + (" The brokers are tried in order and in turn on connection loss." if len(parts) > 1 else ""),
        }
    return servers, vhost


def _example_subject(filters: tuple[SubjectFilter, ...]) -> str:
    """A subject the first filter matches: each wildcard stands for the one word ``example``."""
    words = ["example" if word in ("*", "#") else word for word in filters[0].pattern.split(".")]
    return ".".join(words)
