"""Observability: MLflow's runtime and status, per-turn tracing, diagnostics, PostHog.

- ``mlflow_server``     start (and own) a local MLflow tracking server on 127.0.0.1;
                        ``make mlflow-server`` / ``make mlflow-upgrade``
- ``mlflow_runtime``    whether MLflow can take traces now (health, version), the status
- ``diagnostics_actor`` the one actor that starts the local server in the background and
                        keeps the last probe results, for every replica's status
- ``probes``            the LM and Daytona probes behind ``/api/v1/runtime/tests/*``
- ``tracing``           one MLflow trace per turn, with the session's metadata
- ``trace_search``      a session's traces from MLflow's search, and feedback on them
- ``callbacks``         the DSPy callback registry (MLflow's and PostHog's, each once)
- ``turn_scope``        which turn this thread works for, for per-turn callbacks
- ``analytics``         PostHog events per LM generation and per turn (off by default)
- ``posthog_client``    the process's PostHog client: bounded queue, warn once, flush at exit
"""
