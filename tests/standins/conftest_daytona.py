"""The ``daytona_standin`` fixture: a fresh stand-in Daytona server per test.

Use it from a test module with::

    pytest_plugins = ("tests.standins.conftest_daytona",)

and point the SDK (or ``fleet-rlm daytona-smoke``) at ``daytona_standin.api_url`` with
``daytona_standin.api_key``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.standins.daytona_server import DaytonaStandIn


@pytest.fixture
def daytona_standin(tmp_path: Path) -> Iterator[DaytonaStandIn]:
    root = tmp_path / "daytona-sandboxes"
    root.mkdir()
    with DaytonaStandIn(root=root) as server:
        yield server
