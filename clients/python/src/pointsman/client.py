"""Typed clients for Pointsman's `pointsman.v1.Router` service, sync and async.

    from pointsman import Client
    with Client("127.0.0.1:50051") as c:
        d = c.route(messages=[{"role": "user", "content": "Prove that sqrt(2) is irrational."}], cost_weight=0.3)
        d.model, d.fallbacks, d.request_id
        c.feedback(d.request_id, d.model, "success", latency_ms=840, output_tokens=312)

`messages` is an OpenAI chat conversation as it is (tool calls, `content: null`, content-part
arrays, `developer` turns, any length): `pointsman.openai.map_chat` turns it into Route's messages
and requirements (pass the request's `tools=` / `functions=` too), keeping the tail that fits
`max_messages` and `max_request_bytes`. A conversation with no text at all raises
`NothingToRoute` without calling the server.

Every call has a deadline (`timeout`, seconds; sent as gRPC's `grpc-timeout`, so the server stops
working on a call its caller gave up on) and is retried with exponential back-off within it, by
`retryable`: Route and ListModels on UNAVAILABLE (the server starting, restarting or unreachable)
and RESOURCE_EXHAUSTED (overloaded); Feedback only on RESOURCE_EXHAUSTED, the one answer that
says the report was not taken (after UNAVAILABLE, a deadline or a cancellation it may have
landed, and a second copy would count twice). Other errors are raised as `PointsmanError` with
the server's message, which names the field, its limit and the value given. The request id is
the caller's when given (a UUID is generated otherwise) and comes back on the decision, to be
passed to `feedback`.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import grpc

from pointsman.openai import MAX_MESSAGES, MAX_REQUEST_BYTES, map_chat, needs, provider_preferences
from pointsman.v1 import router_pb2 as pb
from pointsman.v1 import router_pb2_grpc as pb_grpc

Message = Union[Mapping[str, Any], "pb.Message"]

_OUTCOMES = {
    "success": pb.OUTCOME_SUCCESS,
    "timeout": pb.OUTCOME_TIMEOUT,
    "rate_limited": pb.OUTCOME_RATE_LIMITED,
    "server_error": pb.OUTCOME_SERVER_ERROR,
    "refused": pb.OUTCOME_REFUSED,
}


class PointsmanError(Exception):
    """A call the server refused or that did not complete: `code` is the gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class NothingToRoute(PointsmanError, ValueError):
    """The conversation has no text to route on (every message empty, images or tool calls only,
    or no message with a known role). Raised by the client itself, before any call: use a
    default model for such a request (`PointsmanRouter(default_model=...)` does)."""

    def __init__(self, message: str):
        super().__init__(grpc.StatusCode.INVALID_ARGUMENT, message)


@dataclass(frozen=True)
class Candidate:
    """One ranked model with its predictions."""

    model: str
    provider: str
    predicted_quality: float
    predicted_output_tokens: float
    predicted_cost_usd: float
    predicted_latency_ms: float
    utility: float


@dataclass(frozen=True)
class SessionInfo:
    """What the request's session did: `verdict` is "new", "kept" or "moved"; `reason` says why
    (first_turn, best, cache_saving, escalate_only, gain, model_ineligible, unhealthy,
    endpoint_ineligible, provider_order, not_in_catalog), `detail` in words."""

    verdict: str
    reason: str
    detail: str
    previous_model: str
    previous_provider: str
    cached_saving_usd: float
    utility_gain: float
    turn: int


@dataclass(frozen=True)
class Decision:
    """The router's answer: the primary model first, then the fallbacks in order."""

    request_id: str
    candidates: Sequence[Candidate]
    router_version: str
    cost_weight: float
    profile: str
    input_tokens: int
    raw: Any = field(repr=False, compare=False, default=None)
    # The whole failover order as (model, provider): each candidate on its endpoints.
    attempts: Sequence[tuple] = ()
    # What the request's session did, when it named one.
    session: Optional[SessionInfo] = None

    @property
    def model(self) -> str:
        return self.candidates[0].model

    @property
    def provider(self) -> str:
        return self.candidates[0].provider

    @property
    def fallbacks(self) -> list[str]:
        return [c.model for c in self.candidates[1:]]


def route_request(
    messages: Optional[Iterable[Message]] = None,
    prompt: Optional[str] = None,
    request_id: Optional[str] = None,
    profile: Optional[str] = None,
    cost_weight: Optional[float] = None,
    max_cost_usd: Optional[float] = None,
    min_quality: Optional[float] = None,
    allowed_models: Iterable[str] = (),
    denied_models: Iterable[str] = (),
    allowed_providers: Iterable[str] = (),
    denied_providers: Iterable[str] = (),
    max_fallbacks: Optional[int] = None,
    tools: Any = None,
    functions: Any = None,
    max_messages: int = MAX_MESSAGES,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    provider: Any = None,
    response_format: Any = None,
    reasoning_effort: Optional[str] = None,
    reasoning: Any = None,
    max_tokens: Optional[int] = None,
    max_completion_tokens: Optional[int] = None,
    explore: Optional[bool] = None,
    session_id: Optional[str] = None,
    user: Optional[str] = None,
    conversation: Optional[str] = None,
    escalate_only: bool = False,
    max_latency_ms: Optional[float] = None,
    max_latency_percentile: str = "",
) -> "pb.RouteRequest":
    """The `RouteRequest` for these arguments (exactly one of `messages` and `prompt`):
    `messages` and the request's `tools` / `functions` as `pointsman.openai.map_chat` maps them;
    `provider` is OpenRouter's provider-preferences object (a dict, as OpenRouter takes it);
    `response_format`, `reasoning_effort` / `reasoning` and `max_tokens` /
    `max_completion_tokens` as in the OpenAI body add to the requirements endpoints are matched
    against; `max_latency_ms` (at `max_latency_percentile`, p50 by default) is the hard limit on
    an endpoint's measured latency. The session is `session_id` (OpenRouter's), or else OpenAI's
    `user` with a `conversation` key (a `user` alone names no session, as through Envoy);
    `escalate_only` moves it only to a model of higher predicted quality; `explore` opts in to
    (True) or out of (False) exploration. Raises `NothingToRoute` when no message (or the prompt)
    has text."""
    req = pb.RouteRequest(
        request_id=request_id or str(uuid.uuid4()),
        prompt=prompt or "",
        profile=profile or "",
        allowed_models=list(allowed_models),
        denied_models=list(denied_models),
        allowed_providers=list(allowed_providers),
        denied_providers=list(denied_providers),
    )
    if cost_weight is not None:
        req.cost_weight = cost_weight
    if max_cost_usd is not None:
        req.max_cost_usd = max_cost_usd
    if min_quality is not None:
        req.min_quality = min_quality
    if max_fallbacks is not None:
        req.max_fallbacks = max_fallbacks
    if explore is not None:
        # None: the server's [exploration] share; True opts in, False opts out.
        req.explore = explore
    if max_latency_ms is not None:
        req.max_latency.CopyFrom(pb.LatencyLimit(ms=max_latency_ms, percentile=max_latency_percentile))
    if messages is not None:
        mapped = map_chat(
            messages,
            tools=tools,
            functions=functions,
            max_messages=max_messages,
            max_request_bytes=max_request_bytes,
            reserved_bytes=req.ByteSize() + 16,
        )
        if not mapped.has_text:
            raise NothingToRoute(
                f"nothing to route on: none of the {len(mapped.messages)} messages kept has text "
                "(tool calls, images or empty turns only); not sent to Pointsman"
            )
        req.messages.extend(mapped.messages)
        req.requirements.CopyFrom(mapped.requirements)
    elif not (prompt or "").strip():
        raise NothingToRoute("nothing to route on: no messages and an empty prompt; not sent to Pointsman")
    elif tools is not None or functions is not None:
        req.requirements.CopyFrom(map_chat((), tools=tools, functions=functions).requirements)
    needs(
        req.requirements,
        response_format=response_format,
        reasoning_effort=reasoning_effort,
        reasoning=reasoning,
        max_tokens=max_tokens,
        max_completion_tokens=max_completion_tokens,
    )
    if provider is not None:
        req.provider.CopyFrom(provider_preferences(provider))
    if session_id:
        req.session.CopyFrom(pb.Session(id=session_id, escalate_only=escalate_only))
    elif user and conversation:
        req.session.CopyFrom(pb.Session(user=user, conversation=conversation, escalate_only=escalate_only))
    elif escalate_only:
        # The server names the missing session in its INVALID_ARGUMENT.
        req.session.CopyFrom(pb.Session(escalate_only=True))
    return req


_VERDICTS = {pb.SESSION_VERDICT_NEW: "new", pb.SESSION_VERDICT_KEPT: "kept", pb.SESSION_VERDICT_MOVED: "moved"}


def _session(r: "pb.RouteResponse") -> Optional[SessionInfo]:
    if not r.HasField("session"):
        return None
    s = r.session
    return SessionInfo(
        verdict=_VERDICTS.get(s.verdict, "new"),
        reason=s.reason,
        detail=s.detail,
        previous_model=s.previous_model,
        previous_provider=s.previous_provider,
        cached_saving_usd=s.cached_saving_usd,
        utility_gain=s.utility_gain,
        turn=s.turn,
    )


def feedback_request(
    request_id: str,
    model: str,
    outcome: str,
    latency_ms: Optional[float] = None,
    input_tokens: Optional[int] = None,
    output_tokens: Optional[int] = None,
    cost_usd: Optional[float] = None,
    quality: Optional[float] = None,
    provider: Optional[str] = None,
    ttft_ms: Optional[float] = None,
    generation_ms: Optional[float] = None,
) -> "pb.FeedbackRequest":
    """The `FeedbackRequest` for one attempt; `outcome` is one of success, timeout, rate_limited,
    server_error, refused; `provider` names the endpoint the attempt went to (its breaker and
    measurements take the report), with its `ttft_ms` and `generation_ms`."""
    if outcome not in _OUTCOMES:
        raise ValueError(f"outcome must be one of {', '.join(_OUTCOMES)}. Given: {outcome!r}")
    req = pb.FeedbackRequest(request_id=request_id, model=model, outcome=_OUTCOMES[outcome])
    for name, value in (
        ("latency_ms", latency_ms),
        ("input_tokens", input_tokens),
        ("output_tokens", output_tokens),
        ("cost_usd", cost_usd),
        ("quality", quality),
        ("provider", provider),
        ("ttft_ms", ttft_ms),
        ("generation_ms", generation_ms),
    ):
        if value is not None:
            setattr(req, name, value)
    return req


def _decision(r: "pb.RouteResponse") -> Decision:
    return Decision(
        request_id=r.request_id,
        candidates=[
            Candidate(
                model=c.model,
                provider=c.provider,
                predicted_quality=c.predicted_quality,
                predicted_output_tokens=c.predicted_output_tokens,
                predicted_cost_usd=c.predicted_cost_usd,
                predicted_latency_ms=c.predicted_latency_ms,
                utility=c.utility,
            )
            for c in r.candidates
        ],
        router_version=r.router_version,
        cost_weight=r.cost_weight,
        profile=r.profile,
        input_tokens=r.input_tokens,
        raw=r,
        attempts=[(a.model, a.provider) for a in r.attempts],
        session=_session(r),
    )


def _setup(
    client: Any,
    api: Any,
    target: str,
    timeout: float,
    retries: int,
    backoff: float,
    credentials: Any,
    token: Optional[str],
    max_messages: int,
    max_request_bytes: int,
) -> None:
    """The settings, channel and stub of a client; `api` is `grpc` or `grpc.aio`. gRPC's own
    retries are off: ours know the call's deadline and which calls may be repeated."""
    client.timeout, client.retries, client.backoff = timeout, retries, backoff
    client.max_messages, client.max_request_bytes = max_messages, max_request_bytes
    client._metadata = [("authorization", f"Bearer {token}")] if token else []
    opts = [("grpc.max_receive_message_length", 16 << 20), ("grpc.max_send_message_length", max(4 << 20, 2 * max_request_bytes)), ("grpc.enable_retries", 0)]
    client._channel = api.secure_channel(target, credentials, opts) if credentials else api.insecure_channel(target, opts)
    client._stub = pb_grpc.RouterStub(client._channel)


def _route_request(client: Any, messages: Optional[Iterable[Message]], kw: dict) -> "pb.RouteRequest":
    kw.setdefault("max_messages", client.max_messages)
    kw.setdefault("max_request_bytes", client.max_request_bytes)
    return route_request(messages, **kw)


#: What each call is retried on. Feedback is not idempotent: only RESOURCE_EXHAUSTED says the
#: report was not taken; after UNAVAILABLE (a connection lost mid-call), DEADLINE_EXCEEDED or
#: CANCELLED it may have landed.
RETRY_ON = {
    "Route": frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}),
    "ListModels": frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}),
    "Feedback": frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED}),
}


def retryable(call: str, code: grpc.StatusCode) -> bool:
    """Whether a failed `call` ("Route", "Feedback", "ListModels") may be sent again."""
    return code in RETRY_ON.get(call, frozenset())


def backoff_wait(call: str, code: grpc.StatusCode, attempt: int, retries: int, backoff: float, time_left: float) -> Optional[float]:
    """Seconds to wait before retry number `attempt + 1` of `call` after `code`, or None to give
    up: not retryable, out of retries, or the wait would not end before the deadline."""
    if not retryable(call, code) or attempt >= retries:
        return None
    wait = backoff * (2**attempt)
    return wait if wait < time_left else None


class _Retry:
    """One call's deadline and retries."""

    def __init__(self, call: str, timeout: float, retries: int, backoff: float):
        self.call = call
        self.deadline = time.monotonic() + timeout
        self.retries = retries
        self.backoff = backoff
        self.attempt = 0

    def next_wait(self, e: grpc.RpcError) -> Optional[float]:
        """Seconds to wait before the next attempt, or None to give up."""
        wait = backoff_wait(self.call, e.code(), self.attempt, self.retries, self.backoff, self.deadline - time.monotonic())
        if wait is not None:
            self.attempt += 1
        return wait

    def left(self) -> float:
        return max(self.deadline - time.monotonic(), 0.001)

    def error(self, e: grpc.RpcError) -> "PointsmanError":
        """The error to raise. When the deadline has passed, the server's own timeout answer
        (CANCELLED, which tonic sends when `grpc-timeout` runs out first) is DEADLINE_EXCEEDED
        too, so callers see one code for one cause."""
        code, details = e.code(), e.details() or ""
        if code == grpc.StatusCode.CANCELLED and time.monotonic() >= self.deadline:
            code = grpc.StatusCode.DEADLINE_EXCEEDED
        return PointsmanError(code, details)


class Client:
    """Blocking client. `target` is `host:port`; `credentials` turns TLS on; `token` is sent as
    a bearer token (`[auth]`); `max_messages` and `max_request_bytes` are the server's
    `server.max_messages` and `server.max_request_bytes` (the conversation's tail that fits is
    sent)."""

    def __init__(
        self,
        target: str,
        timeout: float = 1.0,
        retries: int = 3,
        backoff: float = 0.05,
        credentials: Optional[grpc.ChannelCredentials] = None,
        token: Optional[str] = None,
        max_messages: int = MAX_MESSAGES,
        max_request_bytes: int = MAX_REQUEST_BYTES,
    ):
        _setup(self, grpc, target, timeout, retries, backoff, credentials, token, max_messages, max_request_bytes)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, name: str, request: Any, timeout: Optional[float]) -> Any:
        method = getattr(self._stub, name)
        retry = _Retry(name, timeout or self.timeout, self.retries, self.backoff)
        while True:
            try:
                return method(request, timeout=retry.left(), metadata=self._metadata)
            except grpc.RpcError as e:
                wait = retry.next_wait(e)
                if wait is None:
                    raise retry.error(e) from e
                time.sleep(wait)

    def route(self, messages: Optional[Iterable[Message]] = None, *, timeout: Optional[float] = None, **kw: Any) -> Decision:
        """Routes an OpenAI chat conversation (or `prompt=`); keyword arguments as
        `route_request` (`tools=`, `functions=`, `cost_weight=`, ...)."""
        return _decision(self._call("Route", _route_request(self, messages, kw), timeout))

    def feedback(self, request_id: str, model: str, outcome: str, *, timeout: Optional[float] = None, **kw: Any) -> bool:
        """Reports one attempt; returns whether the server knew the request id."""
        r = self._call("Feedback", feedback_request(request_id, model, outcome, **kw), timeout)
        return r.known_request

    def list_models(self, *, timeout: Optional[float] = None) -> Any:
        """The catalog with live health (`ListModelsResponse`)."""
        return self._call("ListModels", pb.ListModelsRequest(), timeout)


class AsyncClient:
    """asyncio client (grpc.aio), with the same calls and settings as `Client`."""

    def __init__(
        self,
        target: str,
        timeout: float = 1.0,
        retries: int = 3,
        backoff: float = 0.05,
        credentials: Optional[grpc.ChannelCredentials] = None,
        token: Optional[str] = None,
        max_messages: int = MAX_MESSAGES,
        max_request_bytes: int = MAX_REQUEST_BYTES,
    ):
        _setup(self, grpc.aio, target, timeout, retries, backoff, credentials, token, max_messages, max_request_bytes)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, name: str, request: Any, timeout: Optional[float]) -> Any:
        method = getattr(self._stub, name)
        retry = _Retry(name, timeout or self.timeout, self.retries, self.backoff)
        while True:
            try:
                return await method(request, timeout=retry.left(), metadata=self._metadata)
            except grpc.RpcError as e:
                wait = retry.next_wait(e)
                if wait is None:
                    raise retry.error(e) from e
                await asyncio.sleep(wait)

    async def route(self, messages: Optional[Iterable[Message]] = None, *, timeout: Optional[float] = None, **kw: Any) -> Decision:
        return _decision(await self._call("Route", _route_request(self, messages, kw), timeout))

    async def feedback(self, request_id: str, model: str, outcome: str, *, timeout: Optional[float] = None, **kw: Any) -> bool:
        r = await self._call("Feedback", feedback_request(request_id, model, outcome, **kw), timeout)
        return r.known_request

    async def list_models(self, *, timeout: Optional[float] = None) -> Any:
        return await self._call("ListModels", pb.ListModelsRequest(), timeout)
