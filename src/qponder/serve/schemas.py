"""Request bodies of the HTTP API, validated with pydantic, and OpenAI-style error bodies.

The chat request is the subset of OpenAI's ``POST /v1/chat/completions`` that a single-image VLM scorer can honour:
an optional system message, then one user message with one image (``image_url``: a base64 data URL, or an http(s)
URL when the server allows URLs) and text parts. Parameters that would change the meaning of the answer but are not
implemented (streaming, tools, JSON mode, logprobs) are refused with a 400 naming them rather than ignored; purely
informational ones (``user``, ``metadata``, ``store``, penalties) are accepted and ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from qponder.infer import READOUTS


def error_body(message: str, type_: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def validation_message(err: ValidationError, prefix: str = "") -> tuple[str, str | None]:
    """One readable line (and the offending parameter) from a pydantic error: ``messages.0.role: Input should be…``."""
    parts, param = [], None
    for e in err.errors()[:3]:
        # pydantic puts the tagged-union member in the location ("content.0.text.text"); keep the field path only.
        path = [str(x) for x in e.get("loc", ())]
        for i in range(len(path) - 2):
            if path[i] == "content" and path[i + 1].isdigit() and path[i + 2] in ("text", "image_url"):
                del path[i + 2]
                break
        loc = ".".join(path)
        if param is None and loc:
            param = loc
        msg = e.get("msg", "invalid value").removeprefix("Value error, ")
        if e.get("type") == "missing":
            msg = "field required"
        parts.append(f"{prefix}{loc}: {msg}" if loc else f"{prefix}{msg}")
    more = len(err.errors()) - 3
    if more > 0:
        parts.append(f"and {more} more problem(s)")
    return "; ".join(parts), param


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ImageURL(_Lenient):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ImagePart(_Lenient):
    type: Literal["image_url"]
    image_url: ImageURL

    @field_validator("image_url", mode="before")
    @classmethod
    def _url_as_string(cls, v: Any) -> Any:
        # Some clients send {"image_url": "data:..."}; accept it as {"url": ...}.
        return {"url": v} if isinstance(v, str) else v


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: list[ContentPart] | None = None  # a plain string arrives as one text part
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _normalise_content(cls, v: Any) -> Any:
        # A string is shorthand for one text part; an unknown part type is named instead of pydantic's union error.
        if isinstance(v, str):
            return [{"type": "text", "text": v}]
        if isinstance(v, list):
            for i, part in enumerate(v):
                t = part.get("type") if isinstance(part, dict) else None
                if t not in ("text", "image_url"):
                    raise ValueError(f"content part {i} has type {t!r}; supported part types are 'text' and "
                                     f"'image_url'")
        elif v is not None:
            raise ValueError(f"content must be a string or a list of content parts, got {type(v).__name__}")
        return v


class ChatCompletionRequest(_Lenient):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    max_completion_length: int | None = Field(default=None, ge=1)  # TRL's name; accepted as an alias
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = None
    # Refused when used (they would change the answer's meaning and are not implemented):
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    modalities: list[str] | None = None

    def unsupported(self) -> tuple[str, str] | None:
        """(param, message) for the first requested feature this server does not implement, else None."""
        if self.stream:
            return "stream", "streaming is not supported; send stream=false (the default)"
        if self.tools or self.functions:
            return ("tools" if self.tools else "functions"), "tool/function calling is not supported"
        if self.tool_choice not in (None, "none"):
            return "tool_choice", "tool_choice is not supported"
        if self.response_format and self.response_format.get("type", "text") != "text":
            return "response_format", "only response_format {'type': 'text'} is supported"
        if self.logprobs or self.top_logprobs:
            return "logprobs", "logprobs are not supported"
        if self.modalities and any(m != "text" for m in self.modalities):
            return "modalities", "only text output is supported"
        return None

    def token_limit(self) -> tuple[int | None, str]:
        """The completion-length limit from max_tokens / max_completion_tokens / max_completion_length."""
        named = (("max_tokens", self.max_tokens), ("max_completion_tokens", self.max_completion_tokens),
                 ("max_completion_length", self.max_completion_length))
        given = {k: v for k, v in named if v is not None}
        if len(set(given.values())) > 1:
            names = " and ".join(given)
            raise ValueError(f"{names} disagree ({', '.join(f'{k}={v}' for k, v in given.items())}); send one")
        if not given:
            return None, "max_tokens"
        k, v = next(iter(given.items()))
        return v, k

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if len(stops) > 4:
            raise ValueError("stop: at most 4 stop sequences")
        return [s for s in stops if s]


class ScoreOptions(_Lenient):
    """Options of ``POST /v1/score`` (JSON body fields, or multipart form fields next to the image file)."""

    samples: int = Field(default=1, ge=1)
    readout: str = "generate"
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    seed: int | None = None
    frames: int = Field(default=8, ge=1, le=64)  # a video's frames to sample and score (ignored for an image)

    @field_validator("readout")
    @classmethod
    def _known_readout(cls, v: str) -> str:
        if v not in READOUTS:
            raise ValueError(f"unknown readout {v!r}; use one of {', '.join(READOUTS)}")
        return v


class ScoreJSON(ScoreOptions):
    image: str = Field(min_length=1, description="base64 bytes, a data:image/...;base64 URL, or an http(s) URL")

