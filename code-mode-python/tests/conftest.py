"""Shared helpers of the package's tests: every test runs against the installed wheel and
the runtime it ships."""

import os
import signal
import time

import pytest


def runtime_pid(session) -> int:
    """The pid of the runtime process the session's cells run in (it has run one)."""
    where = session.runtime
    assert where is not None and where.startswith("pid "), where
    return int(where.split()[1])


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)


@pytest.fixture
def anyio_backend():
    return "asyncio"
