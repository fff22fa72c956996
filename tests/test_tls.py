"""TLS: ``amqps://`` with a CA, a client certificate and verification, against a private RabbitMQ node whose TLS
listener verifies its peers (``verify_peer``, ``fail_if_no_peer_cert``), with certificates generated per run.

Also: the broker password never shows in a log line, a repr or an error message, whatever goes wrong.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from typing import Any

import pytest

from faults.rabbitmq_node import PrivateRabbitMQ, private_broker_fixture  # noqa: F401  (the private node)
from faults.socket_leaks import LEAKED_SOCKET_FILTER, collect_leaked_sockets  # noqa: F401
from helpers_process import wait_until
from otter import BrokerUnavailable, Client, ConfigurationError, Otter
from otter.config import Config
from otter.testing import ServedApp
from otter.tls import client_ssl_context

pytestmark = LEAKED_SOCKET_FILTER  # a refused TLS client leaves aiormq's socket to the collector (see faults/)


def tls_config(broker: PrivateRabbitMQ, **overrides: Any) -> dict[str, Any]:
    certs = broker.certs
    return {
        "TLS_CA_FILE": str(certs.ca_file),
        "TLS_CERT_FILE": str(certs.client_cert_file),
        "TLS_KEY_FILE": str(certs.client_key_file),
        **overrides,
    }


@pytest.fixture
def tls_service(private_broker: PrivateRabbitMQ, names: dict[str, Any]) -> Iterator[ServedApp]:
    """An app with an RPC and a task, served over TLS with a client certificate."""
    app = Otter("tls-service")
    seen: list[Any] = []

    @app.add_rpc("tls.echo")
    def echo(comm: Any, data: Any) -> Any:
        return {"echo": data}

    @app.add_task(f"tls.task.{names['MESSAGE_EXCHANGE']}")
    def remember(comm: Any, body: Any) -> None:
        seen.append(body)

    served = ServedApp(app, private_broker.tls_url, **names, **tls_config(private_broker))
    served.seen = seen  # type: ignore[attr-defined]
    with served:
        yield served


def assert_no_password(broker: PrivateRabbitMQ, *texts: str) -> None:
    for text in texts:
        assert broker.password not in text


def test_rpc_and_tasks_over_tls_with_a_client_certificate(
    private_broker: PrivateRabbitMQ,
    tls_service: ServedApp,
    names: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with Client(private_broker.tls_url, **names, **tls_config(private_broker)) as client:
        assert client.comm, client.error
        assert client.rpc("tls.echo", "secret-free").result(timeout=10) == {"echo": "secret-free"}
        client.task(f"tls.task.{names['MESSAGE_EXCHANGE']}", {"n": 1})
        wait_until(lambda: tls_service.seen == [{"n": 1}], 10, "the task to run over TLS")  # type: ignore[attr-defined]
        assert_no_password(private_broker, repr(client), repr(client.comm), client.url)
    assert "amqps://otter:***@localhost" in repr(client)
    assert_no_password(private_broker, caplog.text, repr(Config(tls_service.config)))


def test_the_standard_amqps_url_parameters_work_too(
    private_broker: PrivateRabbitMQ,
    tls_service: ServedApp,
    names: dict[str, Any],
) -> None:
    certs = private_broker.certs
    url = (
        f"{private_broker.tls_url}?cafile={certs.ca_file}&certfile={certs.client_cert_file}"
        f"&keyfile={certs.client_key_file}"
    )
    with Client(url, **names) as client:
        assert client.comm, client.error
        assert client.rpc("tls.echo", 2).result(timeout=10) == {"echo": 2}


def test_verification_can_be_switched_off_explicitly(
    private_broker: PrivateRabbitMQ,
    tls_service: ServedApp,
    names: dict[str, Any],
) -> None:
    # The broker's certificate is signed by a CA the client was not given: accepted only because TLS_VERIFY=False.
    config = tls_config(private_broker, TLS_CA_FILE=str(private_broker.certs.wrong_ca_file), TLS_VERIFY=False)
    with Client(private_broker.tls_url, **names, **config) as client:
        assert client.comm, client.error
        assert client.rpc("tls.echo", 3).result(timeout=10) == {"echo": 3}


def test_a_broker_certificate_from_another_ca_is_refused_clearly(
    private_broker: PrivateRabbitMQ,
    names: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    config = tls_config(private_broker, TLS_CA_FILE=str(private_broker.certs.wrong_ca_file))
    with Client(private_broker.tls_url, **names, **config) as client:
        assert not client.comm
        assert isinstance(client.error, BrokerUnavailable)
        message = str(client.error)
        assert "certificate" in message and "TLS_CA_FILE" in message, message
        with pytest.raises(BrokerUnavailable) as raised:
            client.rpc("tls.echo", 1)
        assert_no_password(private_broker, message, str(raised.value), repr(client), caplog.text)


def test_a_client_without_a_certificate_is_refused_clearly(
    private_broker: PrivateRabbitMQ,
    names: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with Client(private_broker.tls_url, **names, TLS_CA_FILE=str(private_broker.certs.ca_file)) as client:
        assert not client.comm
        assert isinstance(client.error, BrokerUnavailable)
        assert "TLS" in str(client.error), client.error
        assert_no_password(private_broker, str(client.error), repr(client), caplog.text)


def test_a_wrong_password_is_refused_without_showing_it(
    private_broker: PrivateRabbitMQ,
    names: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-password-a1b2c3"
    url = private_broker.tls_url.replace(private_broker.password, wrong)
    with Client(url, **names, **tls_config(private_broker)) as client:
        assert isinstance(client.error, BrokerUnavailable)
        assert "refused the login" in str(client.error), client.error
        for text in (str(client.error), repr(client), caplog.text):
            assert wrong not in text


def test_tls_files_with_a_plain_url_are_a_configuration_error(private_broker: PrivateRabbitMQ) -> None:
    with pytest.raises(ConfigurationError, match="amqps://"):
        client_ssl_context(private_broker.url, tls_config(private_broker))
    with Client(private_broker.url, **tls_config(private_broker)) as client:
        assert isinstance(client.error, ConfigurationError)
        assert_no_password(private_broker, str(client.error), repr(client))


def test_unreadable_tls_files_are_a_configuration_error(private_broker: PrivateRabbitMQ, tmp_path: Any) -> None:
    with pytest.raises(ConfigurationError, match="TLS_CA_FILE"):
        client_ssl_context(private_broker.tls_url, {"TLS_CA_FILE": str(tmp_path / "missing.pem")})
    with pytest.raises(ConfigurationError, match="client certificate"):
        client_ssl_context(
            private_broker.tls_url, tls_config(private_broker, TLS_KEY_FILE=str(private_broker.certs.server_key_file))
        )  # not the certificate's key


def test_the_context_verifies_by_default() -> None:
    context = client_ssl_context("amqps://broker/", {})
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert client_ssl_context("amqp://broker/", {}) is None
    off = client_ssl_context("amqps://broker/?no_verify_ssl=1", {})
    assert off is not None and off.verify_mode == ssl.CERT_NONE
