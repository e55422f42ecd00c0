"""A local sandbox's confinement: resource limits, user, network namespace.

``SandboxLimits`` comes from settings. ``confine`` runs in the child between fork and
exec (``preexec_fn``): it enters a new network namespace (no interfaces but a down
loopback) and drops to the ``nobody`` user when the host runs as root, and sets the
resource limits either way. ``probe_isolation`` says which of these this machine allows.
"""

from __future__ import annotations

import ctypes
import os
import resource
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fleet_rlm.config import Settings

CLONE_NEWNET = 0x40000000
# Each sandbox gets a uid of its own from this range (no passwd entry needed), so that
# sandboxes cannot read, write or signal one another, RLIMIT_NPROC is per sandbox, and
# every process a sandbox starts can be found and killed by its uid.
SANDBOX_UIDS = range(61000, 62000)
SYSTEM_PYTHON = "/usr/bin/python3"


@dataclass(frozen=True)
class SandboxLimits:
    cpu_s: int = 60
    memory_mb: int = 512
    file_mb: int = 16
    max_procs: int = 64
    output_bytes: int = 64 * 1024
    exec_timeout_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> SandboxLimits:
        return cls(
            cpu_s=settings.sandbox_cpu_s,
            memory_mb=settings.sandbox_memory_mb,
            file_mb=settings.sandbox_file_mb,
            max_procs=settings.sandbox_max_procs,
            output_bytes=settings.sandbox_output_bytes,
            exec_timeout_s=settings.sandbox_exec_timeout_s,
        )


@dataclass(frozen=True)
class Isolation:
    python: str
    drop_to_nobody: bool
    own_network: bool

    def describe(self) -> dict[str, object]:
        return {
            "provider": "local",
            "python": self.python,
            "user": "a uid of its own per sandbox" if self.drop_to_nobody else "the server's user",
            "network": "none (own network namespace)"
            if self.own_network
            else "host network: not isolated (needs root on Linux)",
            "audit_hook": True,
            "rlimits": [
                "cpu",
                "address space",
                "file size",
                "processes" if self.drop_to_nobody else "-",
            ],
        }


def _unshare_net() -> bool:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    return libc.unshare(CLONE_NEWNET) == 0


def probe_isolation() -> Isolation:
    """What this host can do, found by trying it in a throwaway child."""
    root = os.geteuid() == 0 and sys.platform.startswith("linux")
    system_python = shutil.which(SYSTEM_PYTHON) is not None
    own_network = False
    if root:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os._exit(0 if _unshare_net() else 1)
        _, status = os.waitpid(pid, 0)
        own_network = os.waitstatus_to_exitcode(status) == 0
    drop = root and system_python
    return Isolation(
        python=SYSTEM_PYTHON if drop else sys.executable,
        drop_to_nobody=drop,
        own_network=own_network,
    )


def confine(limits: SandboxLimits, isolation: Isolation, uid: int | None) -> None:
    """Runs in the sandbox child before exec; must not touch Python-level locks."""
    os.setsid()
    if isolation.own_network:
        _unshare_net()
    mb = 1024 * 1024
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * mb, limits.memory_mb * mb))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb * mb, limits.file_mb * mb))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if uid is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_procs, limits.max_procs))
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)


def prepare_workdir(base: Path, uid: int | None) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o711)
    workdir = Path(tempfile.mkdtemp(prefix="sbx-", dir=base))
    if uid is not None:
        os.chown(workdir, uid, uid)
    os.chmod(workdir, 0o700)
    return workdir
