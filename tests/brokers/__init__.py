"""Brokers the tests start for themselves, other than the shared RabbitMQ 3.10 (see ``rabbitmq4``)."""
