"""Wire shapes: what kiwipy reads from Otter's replies, what Otter reads back, and validation of incoming bodies."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import kiwipy
import pytest
from kiwipy.rmq import defaults as kiwipy_defaults
from kiwipy.rmq import messages as kiwipy_messages
from kiwipy.rmq import utils as kiwipy_utils

from otter import protocol
from otter.errors import MessageError, MessageTooLarge, RemoteError, ValidationError


def kiwipy_reads(reply: dict[str, Any]) -> concurrent.futures.Future[Any]:
    """What a kiwipy caller makes of a reply (its own decoding of RPC responses)."""
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    kiwipy_utils.response_to_future(reply, future)
    return future


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_names_on_the_wire_are_kiwipys() -> None:
    assert protocol.rpc_routing_key("example.hash") == f"{kiwipy_defaults.RPC_TOPIC}.example.hash"
    assert protocol.BROADCAST_ROUTING_KEY == kiwipy_defaults.BROADCAST_TOPIC
    assert protocol.Broadcast("b", "s", "sub", "c").to_wire() == kiwipy_messages.BroadcastMessage.create(
        "b", "s", "sub", "c"
    )
    assert protocol.task_body({"x": 1}) == [{"x": 1}, True]  # kiwipy encodes (task, no_reply)


def test_result_reply_is_kiwipys_shape() -> None:
    reply = protocol.result_reply({"a": 1})
    assert reply == kiwipy_utils.result_response({"a": 1})
    assert kiwipy_reads(reply).result() == {"a": 1}
    assert protocol.raise_for_reply(reply) == {"a": 1}
    assert protocol.raise_for_reply(protocol.result_reply(None)) is None


def test_error_reply_reads_as_a_kiwipy_remote_exception() -> None:
    reply = protocol.error_reply(raised(ValueError("boom")))
    assert reply["exception"] == "ValueError: boom"
    assert reply["error"] == {"type": "ValueError", "message": "boom", "details": None, "traceback": None}
    with pytest.raises(kiwipy.RemoteException, match="ValueError: boom"):
        kiwipy_reads(reply).result()


def test_error_reply_round_trips_as_a_typed_error() -> None:
    with pytest.raises(RemoteError) as caught:
        protocol.raise_for_reply(protocol.error_reply(raised(KeyError("missing"))))
    assert caught.value.remote_type == "KeyError"
    assert caught.value.message == "'missing'"
    assert caught.value.remote_traceback is None


def test_traceback_only_when_asked() -> None:
    exc = raised(ZeroDivisionError("division by zero"))
    assert protocol.error_reply(exc)["error"]["traceback"] is None
    trace = protocol.error_reply(exc, include_traceback=True)["error"]["traceback"]
    assert trace.startswith("Traceback") and "in raised" in trace and "ZeroDivisionError: division by zero" in trace
    with pytest.raises(RemoteError) as caught:
        protocol.raise_for_reply(protocol.error_reply(exc, include_traceback=True))
    assert caught.value.remote_traceback == trace


def test_remote_errors_pass_through_with_their_remote_type() -> None:
    """A nested call's error, re-raised by an outer handler, keeps the original type for the outer caller."""
    inner = RemoteError("negative", remote_type="ValueError", details={"n": -1})
    reply = protocol.error_reply(inner)
    assert reply["exception"] == "ValueError: negative"
    with pytest.raises(RemoteError) as caught:
        protocol.raise_for_reply(reply)
    assert (caught.value.remote_type, caught.value.message, caught.value.details) == (
        "ValueError",
        "negative",
        {"n": -1},
    )


def test_validation_errors_keep_their_field_messages() -> None:
    messages = {"email": ["Not a valid email address."], "password": ["Shorter than minimum length 8."]}
    reply = protocol.error_reply(ValidationError(messages))
    assert reply["error"]["type"] == "ValidationError"
    assert reply["error"]["details"] == {"messages": messages}
    with pytest.raises(ValidationError) as caught:
        protocol.raise_for_reply(reply)
    assert caught.value.messages == messages
    assert isinstance(caught.value, RemoteError)


def test_message_errors_are_named_by_their_class() -> None:
    reply = protocol.error_reply(MessageTooLarge("message of 2000 bytes is over the limit of 1024 bytes"))
    assert reply["error"]["type"] == "MessageTooLarge"


def test_plain_kiwipy_error_reply() -> None:
    kiwipy_reply = kiwipy_utils.exception_response(ValueError("kiwipy says no"))
    with pytest.raises(RemoteError) as caught:
        protocol.raise_for_reply(kiwipy_reply)
    assert "kiwipy says no" in str(caught.value)
    assert isinstance(caught.value, kiwipy.RemoteException)


@pytest.mark.parametrize("reply", [None, [1], "result", {"neither": 1}, {"cancelled": "by user"}])
def test_malformed_replies(reply: Any) -> None:
    with pytest.raises(MessageError):
        protocol.raise_for_reply(reply)


def test_error_without_type_is_a_plain_exception() -> None:
    with pytest.raises(RemoteError) as caught:
        protocol.raise_for_reply({"error": {"message": "??"}})
    assert (caught.value.remote_type, caught.value.message) == ("Exception", "??")


def test_read_task() -> None:
    assert protocol.read_task([{"x": 1}, True]) == ({"x": 1}, True)
    assert protocol.read_task([None, False]) == (None, False)


@pytest.mark.parametrize("payload", [None, {"task": 1}, [1], [1, True, 3], [1, "true"], [1, 0], "task"])
def test_read_task_refuses_other_shapes(payload: Any) -> None:
    with pytest.raises(MessageError, match="two-item list"):
        protocol.read_task(payload)


def test_read_broadcast() -> None:
    full = {"body": {"a": 1}, "sender": "svc", "subject": "message.send", "correlation_id": "c-1"}
    assert protocol.read_broadcast(full) == protocol.Broadcast({"a": 1}, "svc", "message.send", "c-1")
    assert protocol.read_broadcast({"body": None}) == protocol.Broadcast(None)
    message = protocol.Broadcast([1], subject="x.y")
    assert protocol.read_broadcast(message.to_wire()) == message


@pytest.mark.parametrize(
    "payload", [None, [], "body", {"sender": "no body"}, {"body": 1, "subject": 5}, {"body": 1, "subject": ["a"]}]
)
def test_read_broadcast_refuses_other_shapes(payload: Any) -> None:
    with pytest.raises(MessageError):
        protocol.read_broadcast(payload)


def test_task_queue_arguments_are_kiwipys_only_for_a_classic_queue_with_kiwipys_ttl() -> None:
    from otter.protocol import KiwipyDefaults, task_queue_arguments

    kiwipy_ttl = KiwipyDefaults.TASK_MESSAGE_TTL
    assert task_queue_arguments("classic", message_ttl_ms=kiwipy_ttl, delivery_limit=20,
                                dead_letter_queue="dlq") == {"x-message-ttl": kiwipy_ttl}
    assert task_queue_arguments("classic", message_ttl_ms=None, delivery_limit=20, dead_letter_queue="dlq") == {
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dlq"}
    assert task_queue_arguments("quorum", message_ttl_ms=kiwipy_ttl, delivery_limit=5, dead_letter_queue="dlq") == {
        "x-queue-type": "quorum", "x-delivery-limit": 5, "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish", "x-message-ttl": kiwipy_ttl, "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "dlq"}
    with pytest.raises(ValueError, match="classic, quorum"):
        task_queue_arguments("stream", message_ttl_ms=None, delivery_limit=5, dead_letter_queue="dlq")


def test_add_task_refuses_an_unknown_queue_type() -> None:
    import otter
    from otter.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="queue_type='qorum'; it must be one of 'classic', 'quorum'"):
        otter.Otter().add_task("x", queue_type="qorum")
