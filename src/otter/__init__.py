"""Otter: Flask-style microservices over RabbitMQ (RPC, tasks, broadcasts), wire-compatible with kiwipy."""

from .app import Otter
from .blueprints import Blueprint
from .client import AsyncClient, Client
from .comm import Communicator
from .config import Config
from .decorators import use_args
from .errors import (
    BrokerRefused,
    BrokerUnavailable,
    ConfigurationError,
    DeadlineExceeded,
    MessageError,
    MessageTooLarge,
    OtterError,
    RemoteError,
    TimeLimitExceeded,
    Undelivered,
    Unroutable,
    ValidationError,
)
from .futures import CallFuture, TaskFuture
from .logs import MessageContext, current_context
from .pipeline import HandlerContext

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "Blueprint",
    "BrokerRefused",
    "BrokerUnavailable",
    "CallFuture",
    "Client",
    "Communicator",
    "Config",
    "ConfigurationError",
    "DeadlineExceeded",
    "HandlerContext",
    "MessageContext",
    "MessageError",
    "MessageTooLarge",
    "Otter",
    "OtterError",
    "RemoteError",
    "TaskFuture",
    "TimeLimitExceeded",
    "Undelivered",
    "Unroutable",
    "ValidationError",
    "__version__",
    "current_context",
    "use_args",
]
