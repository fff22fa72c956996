"""One error tree rooted at ``OtterError``, compatible with the builtins and kiwipy's exceptions."""

from __future__ import annotations

import concurrent.futures

import kiwipy
import pytest

import otter
from otter import errors
from otter.errors import (
    BrokerUnavailable,
    ConfigurationError,
    DeadlineExceeded,
    MessageError,
    MessageTooLarge,
    OtterError,
    RemoteError,
    Unroutable,
    ValidationError,
)

ALL_ERRORS = [getattr(errors, name) for name in errors.__all__]


@pytest.mark.parametrize("error", ALL_ERRORS, ids=lambda cls: cls.__name__)
def test_every_error_is_an_otter_error_drawn_in_the_docstring(error: type[Exception]) -> None:
    assert issubclass(error, OtterError)
    assert error.__name__ in (errors.__doc__ or "")
    assert getattr(otter, error.__name__) is error  # and exported from the package


def test_tree_shape() -> None:
    for cls in (ConfigurationError, BrokerUnavailable, DeadlineExceeded, Unroutable, MessageError, RemoteError):
        assert OtterError in cls.__bases__
    assert MessageTooLarge.__bases__ == (MessageError,)
    assert ValidationError.__bases__ == (RemoteError,)


def test_deadline_exceeded_is_a_timeout_error() -> None:
    with pytest.raises(TimeoutError):
        raise DeadlineExceeded("late")
    with pytest.raises(concurrent.futures.TimeoutError):
        raise DeadlineExceeded("late")


def test_kiwipy_compatibility() -> None:
    assert issubclass(RemoteError, kiwipy.RemoteException)
    assert issubclass(ValidationError, kiwipy.RemoteException)
    assert issubclass(Unroutable, kiwipy.UnroutableError)


def test_remote_error_carries_the_remote_facts() -> None:
    exc = RemoteError("boom", remote_type="ValueError", details={"k": 1}, remote_traceback="Traceback ...")
    assert str(exc) == "ValueError: boom"
    assert (exc.message, exc.remote_type, exc.details, exc.remote_traceback) == (
        "boom",
        "ValueError",
        {"k": 1},
        "Traceback ...",
    )
    defaults = RemoteError("plain")
    assert (defaults.remote_type, defaults.details, defaults.remote_traceback) == ("Exception", None, None)
    assert str(RemoteError("from kiwipy", remote_type="")) == "from kiwipy"


def test_validation_error_describes_every_field() -> None:
    messages = {"email": ["Not a valid email address."], "password": ["Shorter than minimum length 8."]}
    exc = ValidationError(messages)
    assert exc.messages == messages
    assert exc.remote_type == "ValidationError"
    assert exc.details == {"messages": messages}
    assert "email: Not a valid email address." in str(exc)
    assert "password: Shorter than minimum length 8." in str(exc)
    assert "whole body" in str(ValidationError(["whole body"]))
