"""``xflow serve``: a REST API and a live web view over the same Engine the CLI uses (the ``serve`` extra).

:func:`xflow.serve.app.create_app` builds the ASGI application (Starlette) for one or more engines;
:mod:`xflow.serve.catalog` describes workflows and lists executions without any web dependency (``xflow executions``
uses it too). The web view's HTML, CSS and JavaScript ship in ``static/``: nothing is loaded from the internet.
"""

from __future__ import annotations
