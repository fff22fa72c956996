"""Behaviour shared by the transports: each test runs on memory:// and on RabbitMQ (and, opted in, RabbitMQ 4)."""
