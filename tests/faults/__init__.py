"""Fault tests: worker processes killed, a broker restarted, TLS, all against a private RabbitMQ node."""
