"""AsyncAPI 3.0 documents of an Otter app, and an HTML page of one that works offline.

>>> from otter.asyncapi import document, dumps, render_html
>>> doc = document(app)                 # a dict: every RPC, task queue and broadcast filter, with AMQP bindings
>>> print(dumps(doc, "yaml"))           # or "json"; otter docs APP does this, otter docs APP --serve the page

Not imported by ``import otter``: the payload schemas need apispec (``pip install 'otter-mq[docs]'``).
"""

from .document import ASYNCAPI_VERSION, document
from .html import render_html
from .output import FORMATS, dumps

__all__ = ["ASYNCAPI_VERSION", "FORMATS", "document", "dumps", "render_html"]
