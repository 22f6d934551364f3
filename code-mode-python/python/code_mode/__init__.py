"""Code mode for Python agents: a model writes a small async JavaScript program (a *cell*)
that calls your tools (``await tools.search({q: "..."})``), loops and prints only what
matters; this package runs it in a sandboxed V8 runtime process beside your agent, with
your Python functions as its tools.

>>> import code_mode
>>> def add(a: int, b: int) -> int:
...     '''Adds two numbers.'''
...     return a + b
>>> code_mode.run("text(await tools.add({a: 1, b: 2}))", tools=[add]).text
'3'

``Session`` and ``AsyncSession`` keep stored values across cells and follow running
cells (``wait``, ``terminate``); ``session.tool_specs()`` gives the ``exec`` and ``wait``
tools to hand a model. Integrations: ``code_mode.pydantic_ai`` and ``code_mode.agents``.
A tool may need a person's approval (``Tool(..., approval=True)``): its calls wait in the
session's ``state_dir`` until ``approve`` or ``deny`` decides them (``Session.approve``, or
``code_mode.approve`` from any process). ``IN_PROCESS`` says whether this build can also
run cells inside the Python process (``Session(in_process=True)``).
"""

from ._native import (
    IN_PROCESS,
    CellError,
    CodeModeError,
    LimitExceeded,
    RuntimeLost,
    RuntimeUnavailable,
    SessionClosed,
    __version__,
)
from ._approvals import Approval, approve, deny, pending_approvals
from ._session import (
    AsyncSession,
    AudioItem,
    ImageItem,
    Item,
    Result,
    Session,
    TextItem,
    configure_tracing,
    kept_sessions,
    run,
    shutdown_tracing,
)
from ._tools import Tool, ToolInputError

__all__ = [
    "Approval",
    "AsyncSession",
    "AudioItem",
    "CellError",
    "CodeModeError",
    "IN_PROCESS",
    "ImageItem",
    "Item",
    "LimitExceeded",
    "Result",
    "RuntimeLost",
    "RuntimeUnavailable",
    "Session",
    "SessionClosed",
    "TextItem",
    "Tool",
    "ToolInputError",
    "__version__",
    "approve",
    "configure_tracing",
    "deny",
    "kept_sessions",
    "pending_approvals",
    "run",
    "shutdown_tracing",
]
