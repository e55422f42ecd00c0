"""fleet-rlm: a runtime for recursive language-model agents on Ray.

Map of the package:

- ``config``        settings read from the environment
- ``errors``        the ``FleetError`` tree every user-facing error belongs to
- ``identity``      the ``(workspace_id, user_id, session_id)`` tuple and its checks
- ``store``         SQLAlchemy schema, Alembic migrations, the repository
- ``runtime``       the per-session Ray actor, its event log and the replica-side fan-out
- ``agent``         the DSPy agent, its tools, and the language-model setup
- ``api``           the Starlette app: HTTP routes, both WebSockets, auth
- ``serve``         the Ray Serve deployment around the app
- ``observability`` the MLflow runtime
- ``cli``           the ``fleet-rlm`` command
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fleet-rlm")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
