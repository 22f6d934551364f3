"""Tools: plain Python functions, sync or async, described for the model and checked on
every call.

A function's name, its docstring's first paragraph and a JSON schema of its parameters
(from their type hints) describe it. With pydantic installed the schema and the check are
pydantic's (a model made from the signature); without it, a small fallback covers the
JSON types (str, int, float, bool, list, dict, None and Optional of them).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing
from typing import Any, Callable

try:  # pydantic is optional
    import pydantic
except ImportError:  # pragma: no cover - exercised by the fallback tests
    pydantic = None  # type: ignore[assignment]

__all__ = ["Tool", "ToolInputError", "to_json"]


class ToolInputError(ValueError):
    """A tool's argument does not match its schema."""


@dataclasses.dataclass(frozen=True)
class Tool:
    """A tool a cell may call as ``tools.<name>(args)``.

    ``fn`` takes the argument object's fields as keyword arguments; it may be a
    coroutine function. ``schema`` is the JSON Schema of the argument object.
    ``deferred`` tools are callable and listed in ``ALL_TOOLS`` but left out of the
    ``exec`` description: a cell finds them with ``tools.tool_search``.

    ``approval=True`` (or ``"always"``) makes every call wait on a person: the cell's call
    stays pending, is kept with its exact input in the session's ``state_dir`` and runs
    only once someone approves it (``Session.approve``, ``code_mode.approve``), with the
    input approved; a denied call never runs and rejects with the approver's message.
    ``approval_reason`` says why, to the approver and to the model. Such a tool needs a
    session with a ``state_dir`` (approvals are kept there).
    """

    name: str
    description: str
    schema: dict[str, Any]
    fn: Callable[..., Any]
    deferred: bool = False
    validate: Callable[[dict[str, Any]], dict[str, Any]] | None = dataclasses.field(
        default=None, repr=False, compare=False
    )
    approval: bool | str = False
    approval_reason: str | None = None

    def __post_init__(self) -> None:
        if self.approval not in (True, False, "always", "never"):
            raise ValueError(
                f'approval must be True, False, "always" or "never", not {self.approval!r}'
            )
        if self.approval_reason is not None and not isinstance(self.approval_reason, str):
            raise TypeError("approval_reason must be a str")

    @property
    def needs_approval(self) -> bool:
        """Whether every call of the tool waits on a person's approval."""
        return self.approval in (True, "always")

    @classmethod
    def from_function(
        cls,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        deferred: bool = False,
        approval: bool | str = False,
        approval_reason: str | None = None,
    ) -> "Tool":
        """Describes ``fn`` from its signature, type hints and docstring."""
        schema, validate = _schema_of(fn)
        return cls(
            name=name or fn.__name__,
            description=description if description is not None else _summary(fn),
            schema=schema,
            fn=fn,
            deferred=deferred,
            validate=validate,
            approval=approval,
            approval_reason=approval_reason,
        )

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)

    def arguments(self, input_json: str | None) -> dict[str, Any]:
        """The keyword arguments for a call whose argument is ``input_json``."""
        value = {} if input_json is None else json.loads(input_json)
        if not isinstance(value, dict):
            raise ToolInputError(f"{self.name} expects an object argument, got {type(value).__name__}")
        if self.validate is not None:
            return self.validate(value)
        return value

    def description_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": self.schema,
            "deferred": self.deferred,
            "is_async": self.is_async,
            "approval": self.needs_approval,
            "approval_reason": self.approval_reason,
        }


def as_tool(value: "Tool | Callable[..., Any]") -> Tool:
    if isinstance(value, Tool):
        return value
    if callable(value):
        return Tool.from_function(value)
    raise TypeError(f"a tool is a function or a code_mode.Tool, not {type(value).__name__}")


def to_json(value: Any) -> str:
    """A tool's result as JSON text (pydantic models and dataclasses included)."""
    if pydantic is not None and isinstance(value, pydantic.BaseModel):
        return value.model_dump_json()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise TypeError(f"the tool's result is not JSON: {error}") from None


def _summary(fn: Callable[..., Any]) -> str:
    doc = inspect.getdoc(fn) or ""
    return doc.split("\n\n", 1)[0].strip()


def _parameters(fn: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
    """(name, annotation, default) of each parameter a call can set by keyword."""
    hints = typing.get_type_hints(fn) if not isinstance(fn, type) else {}
    params = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            continue
        params.append((param.name, hints.get(param.name, Any), param.default))
    return params


def _schema_of(fn: Callable[..., Any]):
    params = _parameters(fn)
    if pydantic is not None:
        return _pydantic_schema(fn, params)
    return _fallback_schema(params)


def _pydantic_schema(fn: Callable[..., Any], params):
    fields = {
        name: (annotation, ... if default is inspect.Parameter.empty else default)
        for name, annotation, default in params
    }
    model = pydantic.create_model(  # type: ignore[call-overload]
        f"{fn.__name__}_arguments",
        __config__=pydantic.ConfigDict(extra="forbid"),
        **fields,
    )
    schema = model.model_json_schema()
    schema.pop("title", None)

    def validate(value: dict[str, Any]) -> dict[str, Any]:
        try:
            checked = model.model_validate(value)
        except pydantic.ValidationError as error:
            raise ToolInputError(_pydantic_message(error)) from None
        return {name: getattr(checked, name) for name, _, _ in params}

    return schema, validate


def _pydantic_message(error: "pydantic.ValidationError") -> str:
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "argument"
        problems.append(f"{where}: {item['msg']}")
    return "invalid arguments: " + "; ".join(problems)


_JSON_TYPES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    dict: "object",
    type(None): "null",
}


def _fallback_type(annotation: Any) -> dict[str, Any]:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return {}
    if origin is typing.Union or str(origin) == "types.UnionType":
        return {"anyOf": [_fallback_type(arg) for arg in typing.get_args(annotation)]}
    if origin in (list, tuple, set):
        args = typing.get_args(annotation)
        return {"type": "array", **({"items": _fallback_type(args[0])} if args else {})}
    if origin is dict:
        return {"type": "object"}
    if annotation in _JSON_TYPES:
        return {"type": _JSON_TYPES[annotation]}
    return {}


def _fallback_schema(params):
    properties = {name: _fallback_type(annotation) for name, annotation, _ in params}
    required = [name for name, _, default in params if default is inspect.Parameter.empty]
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required

    def validate(value: dict[str, Any]) -> dict[str, Any]:
        missing = [name for name in required if name not in value]
        unknown = [name for name in value if name not in properties]
        if missing or unknown:
            parts = []
            if missing:
                parts.append("missing " + ", ".join(missing))
            if unknown:
                parts.append("unexpected " + ", ".join(unknown))
            raise ToolInputError("invalid arguments: " + "; ".join(parts))
        for name, item in value.items():
            if not _matches(properties[name], item):
                raise ToolInputError(
                    f"invalid arguments: {name}: expected {_describe(properties[name])}, got {type(item).__name__}"
                )
        return value

    return schema, validate


def _matches(schema: dict[str, Any], value: Any) -> bool:
    if "anyOf" in schema:
        return any(_matches(option, value) for option in schema["anyOf"])
    kind = schema.get("type")
    if kind is None:
        return True
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "array":
        items = schema.get("items")
        return isinstance(value, list) and (items is None or all(_matches(items, v) for v in value))
    python = {"string": str, "boolean": bool, "object": dict, "null": type(None)}[kind]
    return isinstance(value, python)


def _describe(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        return " or ".join(_describe(option) for option in schema["anyOf"])
    return schema.get("type", "any value")
