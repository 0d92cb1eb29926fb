"""xflow-tracker-postgres: registers the ``postgres`` tracker store with xflow.

Declared in this distribution's ``setup.cfg`` under the ``xflow`` entry-point group; psycopg
is imported only when the tracker is used.
"""

from __future__ import annotations

from xflow.core.hookspecs import hookimpl

__version__ = "0.1.0"


@hookimpl
def xflow_tracker_stores() -> list[type]:
    from xflow_tracker_postgres.tracker import PostgresTrackerStore

    return [PostgresTrackerStore]
