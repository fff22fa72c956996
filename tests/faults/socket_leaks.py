"""aiormq 6.9 leaves the socket of a failed connection attempt to the garbage collector: ``Connection.connect``
does not close its ``StreamWriter`` when the broker drops the connection before the first AMQP frame, as it does
while the broker application stops or starts, or when a TLS listener refuses a client without a certificate.
Python then warns ``unclosed <StreamWriter ...>`` whenever the collector gets to it, which pytest (warnings as
errors) pins on whichever test is running at that moment (and ``unclosed <socket.socket ...>`` too, when the
client's event loop was closed before the collector got there).

The tests that provoke it collect garbage when they end, so the warning lands in their own teardown, where
``LEAKED_SOCKET_FILTER`` says it is this known leak and nothing else.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

__all__ = ["LEAKED_SOCKET_FILTER", "collect_leaked_sockets"]

LEAKED_SOCKET_FILTER = pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <(function (StreamWriter|_SelectorTransport|_SSLProtocolTransport)\.__del__"
    r"|socket\.socket ):pytest.PytestUnraisableExceptionWarning"
)


@pytest.fixture(autouse=True)
def collect_leaked_sockets() -> Iterator[None]:
    yield
    gc.collect()
