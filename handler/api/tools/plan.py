"""Tool definitions of a chat request, and what the request asks of them: the ToolPlan.

The legacy `functions` / `function_call` fields are mapped onto `tools` / `tool_choice` here,
so everything after this module sees one shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from handler.api.errors import APIError

# OpenAI's rule for a function's name.
FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"
# OpenAI accepts at most 128 tools in one request.
MAX_TOOLS = 128

Choice = Literal["none", "auto", "required"]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class FunctionDefinition(_Strict):
    """A function the model may call: `parameters` is a JSON schema of its arguments object."""

    name: Annotated[str, Field(pattern=FUNCTION_NAME)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Strict):
    name: str


class NamedToolChoice(_Strict):
    """`{"type": "function", "function": {"name": ...}}`: the model must call this function."""

    type: Literal["function"]
    function: FunctionName


ToolChoice = Choice | NamedToolChoice
FunctionCall = Literal["none", "auto"] | FunctionName


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """The tools a request declares and how the model may use them.

    `choice` is "auto", "required", "none" or the name of the one function the model must call.
    `legacy` is True when the request used `functions` (the answer then holds no parallel calls).
    """

    functions: tuple[FunctionDefinition, ...]
    choice: str
    parallel: bool = True
    legacy: bool = False

    @property
    def calls_allowed(self) -> bool:
        return self.choice != "none"

    @property
    def forced(self) -> bool:
        """The output must be a tool call: "required" or a named function."""
        return self.choice not in ("none", "auto")

    @property
    def named(self) -> str | None:
        return None if self.choice in ("none", "auto", "required") else self.choice

    @property
    def callable_functions(self) -> tuple[FunctionDefinition, ...]:
        """The functions a call may name: the named one only, when one is named."""
        named = self.named
        return tuple(f for f in self.functions if named is None or f.name == named)

    def definitions(self) -> list[dict[str, Any]]:
        """The tools in OpenAI's shape, as chat templates take them."""
        return [{"type": "function", "function": tool_dict(f)} for f in self.functions]


def tool_dict(function: FunctionDefinition) -> dict[str, Any]:
    """A function definition as JSON, without unset fields; parameters default to an empty object."""
    result: dict[str, Any] = {"name": function.name}
    if function.description is not None:
        result["description"] = function.description
    result["parameters"] = arguments_schema(function)
    return result


def arguments_schema(function: FunctionDefinition) -> dict[str, Any]:
    """The JSON schema a call's arguments must validate against (no parameters: an empty object)."""
    if function.parameters is None:
        return {"type": "object", "properties": {}, "additionalProperties": False}
    return function.parameters


def plan_tools(
    tools: list[ToolDefinition] | None,
    tool_choice: ToolChoice | None,
    parallel_tool_calls: bool | None,
    functions: list[FunctionDefinition] | None = None,
    function_call: FunctionCall | None = None,
    *,
    max_size: int,
) -> ToolPlan | None:
    """Check the tool fields of a chat request; None when it declares no tools."""
    if functions is not None and tools is not None:
        raise APIError("send tools or the legacy functions, not both", param="functions")
    if function_call is not None and tool_choice is not None:
        raise APIError("send tool_choice or the legacy function_call, not both", param="function_call")
    legacy = functions is not None or function_call is not None
    declared = [tool.function for tool in tools] if tools is not None else list(functions or [])
    choice_param = "function_call" if function_call is not None else "tool_choice"
    choice = _choice_name(tool_choice if function_call is None else function_call)
    tools_param = "functions" if functions is not None else "tools"
    if not declared:
        if choice is not None:
            raise APIError(f"{choice_param} is only allowed when {tools_param} are given", param=choice_param)
        if tools is not None or functions is not None:
            raise APIError(f"{tools_param} must not be empty", param=tools_param)
        return None
    _check_declared(declared, tools_param, max_size)
    named = choice is not None and choice not in ("none", "auto", "required")
    if named and choice not in {f.name for f in declared}:
        raise APIError(f"{choice_param} names {choice!r}, which is not a declared tool", param=choice_param)
    parallel = not legacy and (parallel_tool_calls is None or parallel_tool_calls)
    return ToolPlan(functions=tuple(declared), choice=choice or "auto", parallel=parallel, legacy=legacy)


def _choice_name(choice: ToolChoice | FunctionCall | None) -> str | None:
    if choice is None or isinstance(choice, str):
        return choice
    if isinstance(choice, NamedToolChoice):
        return choice.function.name
    return choice.name


def _check_declared(declared: list[FunctionDefinition], param: str, max_size: int) -> None:
    if len(declared) > MAX_TOOLS:
        raise APIError(f"at most {MAX_TOOLS} tools may be declared, got {len(declared)}", param=param)
    names: set[str] = set()
    inner = ".function" if param == "tools" else ""
    for index, function in enumerate(declared):
        where = f"{param}.{index}{inner}"
        if function.name in names:
            raise APIError(f"the tool name {function.name!r} is declared twice", param=f"{where}.name")
        names.add(function.name)
        _check_parameters(function, where)
    size = len(json.dumps([tool_dict(f) for f in declared], ensure_ascii=False).encode())
    if size > max_size:
        raise APIError(
            f"the tool definitions take {size} bytes of JSON; this server accepts at most {max_size} "
            "(TOOL_MAX_SCHEMA_SIZE)",
            param=param,
            code="tools_too_large",
        )


def _check_parameters(function: FunctionDefinition, param: str) -> None:
    """Arguments are always a JSON object: a schema for anything else cannot describe them."""
    schema = function.parameters
    if schema is None:
        return
    kind = schema.get("type", "object")
    if kind != "object" and not (isinstance(kind, list) and kind == ["object"]):
        raise APIError(
            f"the parameters of {function.name!r} must be a JSON schema of type object, got type {kind!r}",
            param=f"{param}.parameters",
        )
    properties = schema.get("properties", {})
    if not isinstance(properties, dict) or not all(isinstance(v, (dict, bool)) for v in properties.values()):
        raise APIError(
            f"the parameters of {function.name!r}: properties must map names to schemas",
            param=f"{param}.parameters",
        )
