"""OpenAI chat request -> `RouteRequest` messages and requirements: the one mapping used by
`Client`, `AsyncClient` and the LiteLLM integration (the contract ext_proc implements in Rust).

    mapped = map_chat(messages, tools=request.get("tools"), functions=request.get("functions"))
    mapped.messages      # [pb.Message], what Route is sent
    mapped.requirements  # pb.Requirements: tools, images, audio, files
    mapped.has_text      # False: nothing to route on (no Route call; see NothingToRoute)

1. Roles: `developer` -> `system`, `function` -> `tool`; `system`, `user`, `assistant`, `tool` as
   given; a message with any other role (or none) is left out (the upstream decides about it).
2. Content: a string as is; an array of parts -> the `text` of its `text` / `input_text` parts,
   joined with "\\n"; null, missing or anything else -> "" (an assistant turn with only
   `tool_calls`, an image-only turn).
3. Requirements: tools (a non-empty `tools` / `functions` list, a message with `tool_calls` /
   `function_call`, or a `tool` / `function` turn); images (an `image_url` / `input_image` part);
   audio (`input_audio` / `audio`); files (`file` / `input_file`). Read from the whole request,
   before any message is cut.
4. Size: the tail of the conversation is kept: the last `max_messages` messages, then the oldest
   dropped until the estimate (UTF-8 bytes of role + content, plus 16 per message) fits
   `max_request_bytes` less what the rest of the request takes; a last message still too big
   keeps the start of its content, cut on a character boundary.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, List, Mapping, Optional

from pointsman.v1 import router_pb2 as pb

#: The server's `server.max_messages` default.
MAX_MESSAGES = 1024
#: The server's `server.max_request_bytes` default.
MAX_REQUEST_BYTES = 1 << 20
#: Bytes counted per message on top of its role and content (the protobuf framing, generously).
MESSAGE_OVERHEAD_BYTES = 16

ROLES = {"developer": "system", "function": "tool", "system": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
TEXT_PARTS = frozenset({"text", "input_text"})
IMAGE_PARTS = frozenset({"image_url", "input_image"})
AUDIO_PARTS = frozenset({"input_audio", "audio"})
FILE_PARTS = frozenset({"file", "input_file"})


@dataclass(frozen=True)
class Mapped:
    """What an OpenAI chat request amounts to for `Route`."""

    messages: List["pb.Message"]
    requirements: "pb.Requirements"
    #: Messages left out: unknown roles, and the oldest beyond the count or size limits.
    dropped: int = 0
    #: Whether the kept last message's content was cut to fit.
    cut: bool = False

    @property
    def has_text(self) -> bool:
        """Whether any kept message has non-whitespace text (else there is nothing to route on)."""
        return any(m.content.strip() for m in self.messages)


def _plain(x: Any) -> Any:
    """A mapping view of a message or part given as an object (pydantic, LiteLLM's `Message`)."""
    if isinstance(x, Mapping):
        return x
    for name in ("model_dump", "dict"):
        f = getattr(x, name, None)
        if callable(f):
            try:
                v = f()
            except Exception:  # not the dict() we meant
                continue
            if isinstance(v, Mapping):
                return v
    return None


def content_text(content: Any) -> str:
    """The routing text of an OpenAI `content`: a string as is, the text parts of an array joined
    with "\\n", "" for anything else."""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        texts = []
        for part in content:
            p = _plain(part)
            if p is not None and p.get("type") in TEXT_PARTS and isinstance(p.get("text"), str):
                texts.append(p["text"])
        return "\n".join(texts)
    return ""


def _non_empty(v: Any) -> bool:
    return v is not None and v != [] and v != {} and v != ""


def _note_parts(content: Any, req: "pb.Requirements") -> None:
    if not isinstance(content, (list, tuple)):
        return
    for part in content:
        p = _plain(part)
        kind = p.get("type") if p is not None else None
        if kind in IMAGE_PARTS:
            req.images = True
        elif kind in AUDIO_PARTS:
            req.audio = True
        elif kind in FILE_PARTS:
            req.files = True


def _cut_utf8(text: str, max_bytes: int) -> str:
    """The longest start of `text` within `max_bytes` UTF-8 bytes, on a character boundary."""
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    return data[: max(max_bytes, 0)].decode("utf-8", "ignore")


def needs(
    req: "pb.Requirements",
    *,
    response_format: Any = None,
    reasoning_effort: Optional[str] = None,
    reasoning: Any = None,
    max_tokens: Optional[int] = None,
    max_completion_tokens: Optional[int] = None,
) -> "pb.Requirements":
    """Adds to `req` what an OpenAI body's other fields ask of an endpoint, as ext_proc does:
    `response_format.type == "json_schema"`, `reasoning_effort` (or OpenRouter's
    `reasoning.effort`), `max_completion_tokens` (else `max_tokens`). Returns `req`."""
    rf = _plain(response_format)
    if isinstance(rf, Mapping) and rf.get("type") == "json_schema":
        req.json_schema = True
    r = _plain(reasoning)
    effort = reasoning_effort or (r.get("effort") if isinstance(r, Mapping) else None)
    if isinstance(effort, str) and effort:
        req.reasoning_effort = effort
    n = max_completion_tokens if max_completion_tokens is not None else max_tokens
    if isinstance(n, int) and n > 0:
        req.max_output_tokens = min(n, 2**32 - 1)
    return req


def _percentiles(name: str, v: Any) -> "pb.Percentiles":
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return pb.Percentiles(p50=float(v))
    if isinstance(v, Mapping):
        unknown = [k for k in v if k not in ("p50", "p75", "p90", "p99")]
        if unknown:
            raise ValueError(f"provider.{name}.{unknown[0]} is not a percentile (p50, p75, p90, p99). Given: {v[unknown[0]]!r}")
        return pb.Percentiles(**{k: float(x) for k, x in v.items() if x is not None})
    raise ValueError(f"provider.{name} must be a number (p50) or an object of percentiles. Given: {v!r}")


def provider_preferences(provider: Any) -> "pb.ProviderPreferences":
    """OpenRouter's `provider` object (a dict, as an OpenRouter request carries it) as
    `pb.ProviderPreferences`, field for field; the server checks the values (sort keys,
    quantizations, ranges) and names the field of a bad one."""
    p = _plain(provider)
    if not isinstance(p, Mapping):
        raise ValueError(f"provider must be an object (OpenRouter's provider preferences). Given: {provider!r}")
    out = pb.ProviderPreferences(
        order=list(p.get("order") or ()),
        only=list(p.get("only") or ()),
        ignore=list(p.get("ignore") or ()),
        quantizations=list(p.get("quantizations") or ()),
        data_collection=p.get("data_collection") or "",
        zdr=bool(p.get("zdr")),
        require_parameters=bool(p.get("require_parameters")),
    )
    if p.get("allow_fallbacks") is not None:
        out.allow_fallbacks = bool(p["allow_fallbacks"])
    sort = p.get("sort")
    if isinstance(sort, Mapping):
        out.sort = sort.get("by") or ""
        out.partition = sort.get("partition") or ""
    elif sort:
        out.sort = sort
    mp = p.get("max_price")
    if mp:
        if mp.get("prompt") is not None:
            out.max_price.prompt = float(mp["prompt"])
        if mp.get("completion") is not None:
            out.max_price.completion = float(mp["completion"])
    for name in ("preferred_max_latency", "preferred_min_throughput"):
        if p.get(name) is not None:
            getattr(out, name).CopyFrom(_percentiles(name, p[name]))
    return out


def map_chat(
    messages: Iterable[Any],
    *,
    tools: Any = None,
    functions: Any = None,
    max_messages: int = MAX_MESSAGES,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    reserved_bytes: int = 0,
) -> Mapped:
    """Maps an OpenAI chat request's `messages` (dicts, objects with `model_dump()`, or
    `pb.Message`s, taken as they are) and its `tools` / `functions` (see the module's doc);
    `reserved_bytes` is what the rest of the `RouteRequest` takes of `max_request_bytes`."""
    if max_messages < 1:
        raise ValueError(f"max_messages must be >= 1. Given: {max_messages}")
    req = pb.Requirements(tools=_non_empty(tools) or _non_empty(functions))
    out: List[pb.Message] = []
    left_out = 0
    for raw in messages or ():
        if isinstance(raw, pb.Message):
            out.append(raw)
            if raw.role in ("tool", "function"):
                req.tools = True
            continue
        m = _plain(raw)
        if m is None:
            left_out += 1
            continue
        role = m.get("role")
        content = m.get("content")
        _note_parts(content, req)
        if _non_empty(m.get("tool_calls")) or _non_empty(m.get("function_call")) or role in ("tool", "function"):
            req.tools = True
        mapped_role = ROLES.get(role) if isinstance(role, str) else None
        if mapped_role is None:
            left_out += 1
            continue
        out.append(pb.Message(role=mapped_role, content=content_text(content)))

    # The tail: at most max_messages, then the oldest dropped until the estimate fits.
    if len(out) > max_messages:
        left_out += len(out) - max_messages
        out = out[-max_messages:]
    budget = max_request_bytes - reserved_bytes
    sizes = [len(m.role.encode("utf-8")) + len(m.content.encode("utf-8")) + MESSAGE_OVERHEAD_BYTES for m in out]
    total = sum(sizes)
    first = 0
    while total > budget and len(out) - first > 1:
        total -= sizes[first]
        first += 1
    left_out += first
    out = out[first:]
    cut = False
    if out and total > budget:
        last = out[0]
        room = budget - len(last.role.encode("utf-8")) - MESSAGE_OVERHEAD_BYTES
        out[0] = pb.Message(role=last.role, content=_cut_utf8(last.content, room))
        cut = True
    return Mapped(messages=out, requirements=req, dropped=left_out, cut=cut)
