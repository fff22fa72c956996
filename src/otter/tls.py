"""TLS for ``amqps://`` brokers: one ``ssl.SSLContext`` built from the config and the URL.

Why build it ourselves instead of letting aiormq read the URL: the CA, client certificate and verification then come
from the same config keys as everything else (``TLS_CA_FILE``, ``TLS_CERT_FILE``, ``TLS_KEY_FILE``,
``TLS_KEY_PASSWORD``, ``TLS_VERIFY``, or ``OTTER_TLS_*`` in the environment), a missing or broken file is a clear
``ConfigurationError`` before any connection is tried, and verification is on unless switched off explicitly.

The standard query parameters of an ``amqps://`` URL are honoured too; a config key, when set, wins over them:
``cafile``/``cacertfile``, ``capath``, ``certfile``, ``keyfile``, and ``no_verify_ssl=1`` or ``verify=verify_none``.

>>> Client("amqps://user:secret@broker:5671/", TLS_CA_FILE="ca.pem", TLS_CERT_FILE="me.pem", TLS_KEY_FILE="me.key")
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .errors import ConfigurationError

__all__ = ["TLS_KEYS", "client_ssl_context"]

TLS_KEYS = ("TLS_CA_FILE", "TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_KEY_PASSWORD")
_FALSE_WORDS = {"0", "false", "no", "off", ""}


def client_ssl_context(url: str, config: Mapping[str, Any]) -> ssl.SSLContext | None:
    """The context for ``url``: ``None`` for a plain ``amqp://`` URL, a verifying client context for ``amqps://``.

    Raises ``ConfigurationError`` when TLS files are configured for a plain URL (the user expects encryption and
    would not get it) or when a file is missing or unreadable.
    """
    scheme = url.partition("://")[0].lower()
    if scheme != "amqps":
        configured = [key for key in TLS_KEYS if config.get(key)]
        if configured:
            raise ConfigurationError(
                f"{', '.join(configured)} {'is' if len(configured) == 1 else 'are'} set but the broker URL is "
                f"{scheme}://, which does not use TLS: use an amqps:// URL (RabbitMQ's TLS port is usually 5671)"
            )
        return None
    query = _query(url)
    ca_file = config.get("TLS_CA_FILE") or query.get("cafile") or query.get("cacertfile")
    ca_path = query.get("capath")
    cert_file = config.get("TLS_CERT_FILE") or query.get("certfile")
    key_file = config.get("TLS_KEY_FILE") or query.get("keyfile")
    verify = _verify(config, query)

    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca_file or ca_path:
        _check_readable("TLS_CA_FILE", ca_file)
        try:
            context.load_verify_locations(cafile=ca_file or None, capath=ca_path or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"cannot load the CA certificates from {ca_file or ca_path}: {exc}") from None
    if cert_file:
        _check_readable("TLS_CERT_FILE", cert_file)
        if key_file:
            _check_readable("TLS_KEY_FILE", key_file)
        try:
            context.load_cert_chain(cert_file, key_file or None, password=config.get("TLS_KEY_PASSWORD") or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"cannot load the client certificate {cert_file} with the key {key_file or cert_file}: "
                f"{type(exc).__name__}: {exc.args[-1] if exc.args else exc} (wrong key, or wrong TLS_KEY_PASSWORD?)"
            ) from None
    elif key_file:
        raise ConfigurationError("TLS_KEY_FILE is set without TLS_CERT_FILE: set both to present a client certificate")
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _verify(config: Mapping[str, Any], query: Mapping[str, str]) -> bool:
    setting = config.get("TLS_VERIFY", True)
    if isinstance(setting, str):
        setting = setting.strip().lower() not in _FALSE_WORDS
    if not setting:
        return False
    if query.get("no_verify_ssl", "0").strip().lower() not in _FALSE_WORDS:
        return False
    return query.get("verify", "verify_peer").strip().lower() != "verify_none"


def _query(url: str) -> dict[str, str]:
    try:
        parsed = parse_qs(urlsplit(url).query, keep_blank_values=True)
    except ValueError:
        return {}
    return {key: values[-1] for key, values in parsed.items()}


def _check_readable(key: str, path: str | None) -> None:
    if path and not Path(path).is_file():
        raise ConfigurationError(f"{key} is {path}, which is not a readable file")
