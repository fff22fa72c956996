"""RabbitMQ through aio-pika's robust connection, on kiwipy's exchanges and routing keys.

| module | job |
|---|---|
| ``transport`` | ``AmqpTransport``: the ``Transport`` contract, wiring the parts below |
| ``connection`` | the robust connection, its channels, and which path carries messages on them |
| ``publishing`` | the one send path (``Sender``) over an ``Outlet``: queued at once or waiting; confirms; outages |
| ``fast`` / ``frames`` | the fast path: publishes written as bytes on aiormq's channel, deliveries straight from it |
| ``public`` | the fallback: aio-pika's ``Message``, ``Exchange.publish`` and ``Queue.consume`` |
| ``rpc`` | calls waiting for replies: the reply queue, returns, deadlines |
| ``dead_letters`` | dead letters, delayed retries, and peek / replay / purge of the dead-letter queue |
| ``errors`` | aio-pika and aiormq errors in Otter's tree |
| ``fence`` | whether the fast path fits the installed versions; applies ``aiormq_fixes`` / ``pamqp_fixes`` at connect |
"""

from ...protocol import TASK_QUEUE_ARGUMENTS
from .transport import AmqpTransport

__all__ = ["TASK_QUEUE_ARGUMENTS", "AmqpTransport"]
