"""Observability: the MLflow server the runtime may start, its status, and per-turn tracing.

- ``mlflow_server``  start (and own) a local MLflow tracking server on 127.0.0.1
- ``mlflow_runtime`` whether MLflow answers, and the hint when it does not
- ``tracing``        one MLflow trace per turn, with the session's metadata
"""
