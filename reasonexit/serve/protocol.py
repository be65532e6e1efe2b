"""What ``reasonexit serve`` accepts: request models that check their own fields, and the error object.

A request body is validated by :class:`ChatCompletionRequest` or :class:`CompletionRequest` in
the order of their fields, each field checked in full (type, then value) before the next. The
first fault found is answered as an OpenAI-style error naming the field in ``param``: a wrong
type reads ``"<field> has the wrong type: <value>"``; any other fault carries its own message,
status and code. A checked request turns itself into the server's :class:`Call` (decoding options
over the server's defaults, as vLLM's ``ChatCompletionRequest.to_sampling_params``). What needs the
engine session (the chat template, the context length, building the method) is done by the
serving object (:mod:`reasonexit.serve.serving`).
"""

from dataclasses import dataclass, replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ..errors import UserError
from ..methods.base import Decoding, Method

#: Stop strings per request at most, and characters per stop string at most.
MAX_STOP, MAX_STOP_CHARS = 16, 256


class ApiError(Exception):
    """An error answered as an OpenAI-style error object."""

    def __init__(
        self, status: int, message: str, param: str | None = None, type_: str = "invalid_request_error",
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type_, code

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ServedLimits:
    """What a request is checked against: the server's settings (the validation context)."""

    model_name: str  #: the name the server answers to (``--served-model-name``, else the model)
    root_model: str  #: the model itself, also accepted as a request's ``model``
    max_n: int
    vocab_size: int
    defaults: Decoding


@dataclass
class Call:
    """One checked request, ready to run: prompts (token ids), decoding, method, n, streaming."""

    prompts: list[list[int]]
    decoding: Decoding
    method: Method
    n: int
    stream: bool
    include_usage: bool
    echo_model: str
    stop: tuple[str, ...] = ()
    #: Keep the stop string in the text (vLLM's ``include_stop_str_in_output``); by default it is
    #: cut off, as the OpenAI API does.
    include_stop: bool = False

    @property
    def trim(self) -> tuple[str, ...]:
        """The stop strings cut from the response text."""
        return () if self.include_stop else self.stop


def _fault(message: str, param: str | None, status: int = 400, code: str | None = None) -> PydanticCustomError:
    """A field's fault, carried through pydantic's validation to :func:`_api_error`."""
    return PydanticCustomError(
        "api_error", "{message}", {"message": message, "param": param, "status": status, "code": code}
    )


def _api_error(error: Any) -> ApiError:
    """The answer to one pydantic error: a fault as raised, or a wrong type naming the field."""
    if error["type"] == "api_error":
        ctx = error["ctx"]
        return ApiError(ctx["status"], ctx["message"], ctx["param"], code=ctx["code"])
    name = str(error["loc"][0])
    return ApiError(400, f"{name} has the wrong type: {error['input']!r}", name)


def _content_text(content: Any, where: str) -> str:
    """A message's content as text: a string, or a list of text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: only text ones
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _fault(f"{where}: only text content parts are supported", where)
            parts.append(part["text"])
        return "".join(parts)
    raise _fault(f"{where} must be a string or a list of text parts", where)


def _is_token_ids(value: Any) -> bool:
    """A non-empty list of integers (``true`` is not one)."""
    return (
        isinstance(value, list) and bool(value) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


class _Request(BaseModel):
    """What every request has first: the model it asks for. ``None`` counts as absent throughout."""

    # strict: no coercion (``"1"`` is not a number, ``true`` not an integer); other fields are ignored
    model_config = ConfigDict(strict=True, extra="ignore")

    model: str | None = None

    @classmethod
    def parse(cls, body: Any, limits: ServedLimits) -> Any:
        """The checked request of a JSON body; its first fault raises :class:`ApiError`."""
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        try:
            return cls.model_validate(body, context=limits)
        except ValidationError as exc:
            raise _api_error(exc.errors()[0]) from None

    @field_validator("model")
    @classmethod
    def _served(cls, name: str | None, info: ValidationInfo) -> str | None:
        limits: ServedLimits = info.context
        if name is not None and name not in (limits.model_name, limits.root_model):
            raise _fault(f"the model {name!r} does not exist; this server serves {limits.model_name!r}", "model",
                         404, "model_not_found")
        return name


class _ChatPrompt(_Request):
    """The prompt of a chat request: its messages, and ``max_completion_tokens``, which wins over
    ``max_tokens`` (then not read at all)."""

    messages: list[dict[str, str]] | None = Field(None, validate_default=True)
    max_completion_tokens: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _completion_tokens_win(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("max_completion_tokens") is not None:
            return {k: v for k, v in data.items() if k != "max_tokens"}
        return data

    @field_validator("messages", mode="before")
    @classmethod
    def _text_messages(cls, messages: Any) -> list[dict[str, str]]:
        """A non-empty list of ``{"role", "content"}`` with text content (parts are joined)."""
        if not isinstance(messages, list) or not messages:
            raise _fault("messages must be a non-empty list of chat messages", "messages")
        out = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise _fault(f"messages[{i}] must be an object with 'role' and 'content'", f"messages[{i}]")
            out.append({"role": m["role"], "content": _content_text(m.get("content"), f"messages[{i}].content")})
        return out


class _TextPrompt(_Request):
    """The prompt of a completions request: a string, a list of strings, token ids or lists of them."""

    prompt: list[str | list[int]] | None = Field(None, validate_default=True)

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompts(cls, prompt: Any, info: ValidationInfo) -> list[str | list[int]]:
        """The prompts as a list: non-empty strings, or token ids within the vocabulary."""
        if isinstance(prompt, str) or _is_token_ids(prompt):
            prompt = [prompt]
        if not isinstance(prompt, list) or not prompt:
            raise _fault("prompt must be a string, a list of strings, or token ids", "prompt")
        vocab = info.context.vocab_size
        for i, p in enumerate(prompt):
            if isinstance(p, str):
                if not p:
                    raise _fault(f"prompt[{i}] is empty", "prompt")
            elif _is_token_ids(p):
                if any(not 0 <= t < vocab for t in p):
                    raise _fault(f"prompt[{i}] has token ids outside the vocabulary (0..{vocab - 1})", "prompt")
            else:
                raise _fault(f"prompt[{i}] must be a string or a non-empty list of token ids", "prompt")
        return prompt


class _Options(_Request):
    """The options every request shares, after its prompt. Absent ones take the server's defaults."""

    #: Tokens to generate at most; after validation, the effective number (the server's default
    #: when absent; for chat, ``max_completion_tokens`` when given).
    max_tokens: int | None = Field(None, validate_default=True)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    #: The sampling values are checked together once this, the last sampling field, is read.
    seed: int | None = Field(None, validate_default=True)
    n: int | None = Field(None, validate_default=True)
    stop: tuple[str, ...] = ()
    include_stop_str_in_output: bool | None = None
    # accepted only when empty or false
    logprobs: Any = None
    tools: Any = None
    functions: Any = None
    response_format: Any = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    #: ``{"method": name, option: value, ...}``: the method for this request (default: the server's).
    reasonexit: dict[str, Any] | None = None

    @field_validator("max_tokens")
    @classmethod
    def _effective_max_tokens(cls, value: int | None, info: ValidationInfo) -> int:
        given = info.data.get("max_completion_tokens")
        value = given if given is not None else value
        value = info.context.defaults.max_tokens if value is None else value
        if value < 1:
            raise _fault(f"max_tokens must be >= 1, got {value}", "max_tokens")
        return value

    @field_validator("seed")
    @classmethod
    def _sampling_values(cls, seed: int | None, info: ValidationInfo) -> int | None:
        """The sampling values by vLLM's rules (``Decoding`` checks itself), once every sampling
        field has its type; the field at fault is the parameter vLLM's validation error names."""
        if not {"max_tokens", "temperature", "top_p", "top_k"} <= info.data.keys():
            return seed  # an earlier field is at fault and is answered first
        try:
            cls._decoding({**info.data, "seed": seed}, info.context.defaults)
        except UserError as exc:
            raise _fault(str(exc), getattr(exc.__context__, "parameter", None)) from None
        return seed

    @field_validator("n")
    @classmethod
    def _choices(cls, n: int | None, info: ValidationInfo) -> int:
        n = 1 if n is None else n
        max_n = info.context.max_n
        if not 1 <= n <= max_n:
            raise _fault(f"n must be between 1 and {max_n}, got {n}", "n")
        return n

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_strings(cls, value: Any) -> tuple[str, ...]:
        """A string or a list of strings, without repeats (absent, ``""`` or ``[]``: none)."""
        if value is None or value == "":
            return ()
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items):
            raise _fault(f"stop must be a non-empty string or a list of them, got {value!r}", "stop")
        if len(items) > MAX_STOP or any(len(s) > MAX_STOP_CHARS for s in items):
            raise _fault(f"stop takes at most {MAX_STOP} strings of at most {MAX_STOP_CHARS} characters", "stop")
        return tuple(dict.fromkeys(items))

    @field_validator("logprobs", "tools", "functions", "response_format")
    @classmethod
    def _unsupported(cls, value: Any, info: ValidationInfo) -> Any:
        if value not in (None, False, [], {}):
            raise _fault(f"{info.field_name} is not supported by reasonexit serve", info.field_name)
        return value

    @field_validator("reasonexit", mode="before")
    @classmethod
    def _method_choice(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, dict):
            raise _fault("reasonexit must be an object such as {\"method\": \"deer\", \"threshold\": 0.9}",
                         "reasonexit")
        if value is not None and "method" in value and not isinstance(value["method"], str):
            raise _fault(f"reasonexit.method must be a method name, got {value['method']!r}", "reasonexit.method")
        return value

    @staticmethod
    def _decoding(values: dict[str, Any], defaults: Decoding) -> Decoding:
        """``defaults`` with the request's sampling values that were given."""

        def given(name: str) -> Any:
            value = values.get(name)
            return getattr(defaults, name) if value is None else value

        return replace(defaults, max_tokens=values["max_tokens"], temperature=float(given("temperature")),
                       top_p=float(given("top_p")), top_k=given("top_k"), seed=given("seed"))

    def to_call(self, prompts: list[list[int]], method: Method, limits: ServedLimits) -> Call:
        """The call this request asks for, on the prompts' token ids with ``method``."""
        return Call(
            prompts=prompts,
            decoding=self._decoding(dict(self), limits.defaults),
            method=method,
            n=self.n,
            stream=bool(self.stream),
            include_usage=bool((self.stream_options or {}).get("include_usage")),
            echo_model=self.model or limits.model_name,
            stop=self.stop,
            include_stop=bool(self.include_stop_str_in_output),
        )


class ChatCompletionRequest(_Options, _ChatPrompt):
    """A ``/v1/chat/completions`` body: model, messages, max_completion_tokens, then the options."""


class CompletionRequest(_Options, _TextPrompt):
    """A ``/v1/completions`` body: model, prompt, then the options."""
