"""Calls that wait on a person: a tool declared with ``approval=True`` (or a tools file's
``approval = "always"``) keeps each call of a cell waiting, with its exact input, in the
session's ``state_dir`` until someone approves it (optionally with edited input, which is
what then runs) or denies it (it never runs; its promise rejects with the message).

``Session.pending_approvals``/``approve``/``deny`` decide a session's own calls;
``pending_approvals``, ``approve`` and ``deny`` here decide any call kept in a state
directory, from any process that opens it (another process, days later, while the
session's process runs or after it stopped). A decision is taken once.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from typing import Any, Literal

from . import _native

__all__ = ["Approval", "approve", "deny", "pending_approvals"]


@dataclasses.dataclass(frozen=True)
class Approval:
    """A call that waits on a person (or waited: an approval as decided)."""

    id: str
    """What ``approve`` and ``deny`` take."""
    tool: str
    """The tool the cell called."""
    input: Any
    """The call's input as the cell passed it (a JSON value; ``None`` when it passed none)."""
    reason: str | None
    """Why the tool needs an approval (the tool's ``approval_reason``)."""
    cell_id: str
    call_id: str
    """The call's id in its cell (``tool-2``), as the model's line names it."""
    session: str
    """The session's id in its state directory."""
    front: str
    """What keeps the session: ``python`` for this package's sessions."""
    requested_at: datetime.datetime
    """When the call began to wait (UTC)."""
    age: datetime.timedelta
    """How long it had waited when it was listed."""
    state: Literal["pending", "approved", "sending", "denied", "told"]
    """``pending``; approved: ``approved``, then ``sending`` once the process that holds the
    call took it to send; denied: ``denied``, then ``told`` once its cell got it. What
    ``approve`` and ``deny`` return is read right after the decision."""
    waiting_line: str
    """The line the model read in the cell's observation while the call waited."""

    @classmethod
    def _from_value(cls, value: dict[str, Any]) -> "Approval":
        requested = datetime.datetime.fromtimestamp(value["requested_at_ms"] / 1000, datetime.timezone.utc)
        return cls(
            id=value["id"],
            tool=value["tool"],
            input=value["input"],
            reason=value["reason"],
            cell_id=value["cell_id"],
            call_id=value["call_id"],
            session=value["session"],
            front=value["front"],
            requested_at=requested,
            age=datetime.timedelta(milliseconds=value["age_ms"]),
            state=value["state"],
            waiting_line=value["waiting_line"],
        )

    @classmethod
    def _list(cls, payload: str) -> list["Approval"]:
        return [cls._from_value(value) for value in json.loads(payload)]

    @classmethod
    def _one(cls, payload: str) -> "Approval":
        return cls._from_value(json.loads(payload))


def input_json(value: Any) -> str:
    """An edited input as the JSON text sent in place of the cell's."""
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise TypeError(f"the edited input is not JSON: {error}") from None


def pending_approvals(
    state_dir: str | os.PathLike[str],
    *,
    session_id: str | None = None,
    front: str | None = None,
) -> list[Approval]:
    """The calls waiting on a person in ``state_dir``, oldest first: every session's, or
    ``session_id``'s, or those kept by ``front`` (``"python"`` for this package's sessions;
    the directory may be shared with ``code-mode serve`` and ``code-mode mcp``)."""
    return Approval._list(_native.pending_approvals(os.fspath(state_dir), session_id, front))


def approve(state_dir: str | os.PathLike[str], id: str, input: Any = None) -> Approval:
    """Approves waiting call ``id`` of ``state_dir``, once: it runs with its own input, or
    with ``input`` (a JSON value) instead when given. The process whose session holds the
    call sends it at once if it is this one, within a moment if it is another. Raises
    ``CodeModeError`` when no such call waits (decided already, its cell ended, never
    asked) or it expired. Returns the approval as decided."""
    edited = input_json(input) if input is not None else None
    return Approval._one(_native.decide_approval(os.fspath(state_dir), id, edited, None))


def deny(state_dir: str | os.PathLike[str], id: str, message: str) -> Approval:
    """Denies waiting call ``id`` of ``state_dir``, once: it never runs, and its promise
    rejects with a text that carries ``message`` (the model reads it). Raises
    ``CodeModeError`` as ``approve`` does. Returns the approval as decided."""
    if not isinstance(message, str):
        raise TypeError("message must be a str")
    return Approval._one(_native.decide_approval(os.fspath(state_dir), id, None, message))
