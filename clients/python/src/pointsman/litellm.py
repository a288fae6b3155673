"""LiteLLM integration: Pointsman chooses the model group and the fallback order of each request
sent to a LiteLLM `Router`, and every attempt is reported back as `Feedback`.

    import litellm
    from pointsman import AsyncClient
    from pointsman.litellm import PointsmanRouter

    router = litellm.Router(model_list=[...])   # one model group per catalog model id
    pm = PointsmanRouter(router, AsyncClient("127.0.0.1:50051"))
    resp = await pm.acompletion(model="pointsman/auto", messages=[...], pointsman={"cost_weight": 0.3})

A request whose `model` is one of `route_models` is routed: Pointsman's primary becomes `model`
and the rest of its candidates (those the router has a group for) LiteLLM's `fallbacks` for this
call, so LiteLLM's own fallback machinery walks Pointsman's order on an upstream error. The
conversation is sent as the clients map any OpenAI chat request (`pointsman.openai.map_chat`:
tool calls, content parts, the call's `tools` / `functions` as requirements, the tail that fits);
one with no text at all (tool calls or images only) goes to `default_model` without a Route call,
or raises `NothingToRoute` when there is none. Any other model goes to the router unchanged. The request id travels in the call's `metadata`
(`pointsman_request_id`), and `PointsmanCallback`, a LiteLLM `CustomLogger` that
`PointsmanRouter` registers in `litellm.callbacks`, reports each attempt of a routed request with
its model group, outcome, latency, tokens and cost: success; 429 rate limited; timeouts; content
policy refusals; other 5xx and connection errors as server errors. Client errors (other 4xx)
report nothing: they are not the model's fault.

Tested with LiteLLM 1.110.2 (`pip install 'pointsman[litellm]'` pins it). Set
`LITELLM_LOCAL_MODEL_COST_MAP=True` on machines without internet access, or LiteLLM tries to
download its price list at import.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import weakref
from typing import Any, Iterable, Optional

import grpc
import litellm
from litellm.integrations.custom_logger import CustomLogger

from pointsman.client import AsyncClient, Client, NothingToRoute, PointsmanError

log = logging.getLogger("pointsman.litellm")

REQUEST_ID_KEY = "pointsman_request_id"
ROUTER_KEY = "pointsman_router"

# LiteLLM keeps one logger per class once it has seen it, so one callback serves every
# `PointsmanRouter`; each routed call names its router (by key), whose clients send the reports.
_ROUTERS: "weakref.WeakValueDictionary[str, PointsmanRouter]" = weakref.WeakValueDictionary()
_COUNTER = itertools.count()


def _status(exc: Any) -> Optional[int]:
    code = getattr(exc, "status_code", None)
    return code if isinstance(code, int) else None


def outcome_of(exc: Any) -> Optional[str]:
    """The Feedback outcome of a failed attempt, or None for the caller's own errors."""
    if isinstance(exc, litellm.ContentPolicyViolationError):
        return "refused"
    if isinstance(exc, litellm.Timeout):
        return "timeout"
    if isinstance(exc, litellm.RateLimitError) or _status(exc) == 429:
        return "rate_limited"
    code = _status(exc)
    if code is not None and 400 <= code < 500:
        return "timeout" if code == 408 else None
    return "server_error"


def _usage(response: Any) -> tuple[Optional[int], Optional[int]]:
    usage = getattr(response, "usage", None)
    if usage is None:
        return None, None
    return getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)


class PointsmanCallback(CustomLogger):
    """Reports every attempt of a routed request to Pointsman (`Feedback`), with the clients of
    the `PointsmanRouter` that routed it. Registered once, by the first `PointsmanRouter`."""

    def _report(self, kwargs: dict, response: Any, start_time: Any, end_time: Any, failed: bool) -> Optional[dict]:
        params = kwargs.get("litellm_params") or {}
        metadata = params.get("metadata") or {}
        request_id = metadata.get(REQUEST_ID_KEY)
        router = _ROUTERS.get(str(metadata.get(ROUTER_KEY)))
        if not request_id or router is None:
            return None
        model = metadata.get("model_group") or kwargs.get("model")
        if failed:
            outcome = outcome_of(kwargs.get("exception"))
            if outcome is None:
                return None
            report = {"request_id": request_id, "model": model, "outcome": outcome, "_router": router}
        else:
            report = {"request_id": request_id, "model": model, "outcome": "success", "_router": router}
            prompt_tokens, completion_tokens = _usage(response)
            report["input_tokens"] = prompt_tokens
            report["output_tokens"] = completion_tokens
            cost = kwargs.get("response_cost")
            if isinstance(cost, (int, float)) and cost > 0:
                report["cost_usd"] = float(cost)
        try:
            report["latency_ms"] = (end_time - start_time).total_seconds() * 1000.0
        except Exception:  # start/end are datetimes in every LiteLLM version we know of
            pass
        return report

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):  # noqa: D102
        await self._send(self._report(kwargs, response_obj, start_time, end_time, failed=False))

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):  # noqa: D102
        await self._send(self._report(kwargs, response_obj, start_time, end_time, failed=True))

    def log_success_event(self, kwargs, response_obj, start_time, end_time):  # noqa: D102
        self._send_sync(self._report(kwargs, response_obj, start_time, end_time, failed=False))

    def log_failure_event(self, kwargs, response_obj, start_time, end_time):  # noqa: D102
        self._send_sync(self._report(kwargs, response_obj, start_time, end_time, failed=True))

    async def _send(self, report: Optional[dict]) -> None:
        if report is None:
            return
        router = report.pop("_router")
        if router.client is None:
            # LiteLLM may log a synchronous call on its event loop: report with the sync client
            # off the loop.
            await asyncio.to_thread(self._send_sync, {**report, "_router": router})
            return
        # The client retries RESOURCE_EXHAUSTED within its deadline and nothing else: a report
        # that may have landed is never sent twice.
        try:
            await router.client.feedback(**report)
        except (PointsmanError, RuntimeError) as e:  # never fail the caller's request over a report
            log.warning("pointsman feedback not recorded: %s", e)

    def _send_sync(self, report: Optional[dict]) -> None:
        if report is None:
            return
        router = report.pop("_router")
        if router.sync_client is None:
            log.warning("pointsman feedback not recorded: a synchronous log of a call routed with an AsyncClient only")
            return
        try:
            router.sync_client.feedback(**report)
        except PointsmanError as e:
            log.warning("pointsman feedback not recorded: %s", e)


class PointsmanRouter:
    """Wraps a LiteLLM `Router`: `acompletion` / `completion` route `route_models` requests
    through Pointsman, everything else straight to the router. `default_model` (a model group of
    the router) serves routed requests that have no text to route on."""

    def __init__(
        self,
        router: Any,
        client: Optional[AsyncClient] = None,
        sync_client: Optional[Client] = None,
        route_models: Iterable[str] = ("pointsman/auto",),
        register_callback: bool = True,
        default_model: Optional[str] = None,
    ):
        if client is None and sync_client is None:
            raise ValueError("give an AsyncClient (for acompletion), a Client (for completion), or both")
        self.router = router
        self.client = client
        self.sync_client = sync_client
        self.route_models = set(route_models)
        self.default_model = default_model
        self.key = f"{id(self):x}-{next(_COUNTER)}"
        _ROUTERS[self.key] = self
        if register_callback and not any(isinstance(c, PointsmanCallback) for c in litellm.callbacks):
            litellm.callbacks.append(PointsmanCallback())

    def _plan(self, decision: Any, kwargs: dict) -> dict:
        groups = set(self.router.get_model_names())
        order = [c.model for c in decision.candidates if c.model in groups]
        if not order:
            raise PointsmanError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"none of Pointsman's candidates ({', '.join(c.model for c in decision.candidates)}) is a model group of this router",
            )
        metadata = dict(kwargs.pop("metadata", None) or {})
        metadata[REQUEST_ID_KEY] = decision.request_id
        metadata[ROUTER_KEY] = self.key
        return {**kwargs, "model": order[0], "fallbacks": order[1:], "metadata": metadata}

    def _unroutable(self, e: NothingToRoute) -> str:
        if self.default_model is None:
            raise e
        log.info("pointsman: %s; sent to default_model %s", e.message, self.default_model)
        return self.default_model

    @staticmethod
    def _route_args(pointsman: Optional[dict], kwargs: dict) -> dict:
        """Route's options plus the call's tools / functions (requirements) and its session: the
        call's OpenAI `user` (with `pointsman={"conversation": ...}`), or `pointsman={"session_id":
        ...}`, keeps a conversation on the deployment of its last turn (see docs/routing.md)."""
        return {"tools": kwargs.get("tools"), "functions": kwargs.get("functions"), "user": kwargs.get("user"), **(pointsman or {})}

    async def acompletion(self, model: str, messages: list, pointsman: Optional[dict] = None, **kwargs: Any) -> Any:
        """`Router.acompletion`, routed by Pointsman when `model` asks for it. `pointsman` holds
        Route's options (`cost_weight`, `profile`, `max_cost_usd`, `request_id`, ...)."""
        if model not in self.route_models:
            return await self.router.acompletion(model=model, messages=messages, **kwargs)
        if self.client is None:
            raise ValueError("acompletion needs an AsyncClient")
        try:
            decision = await self.client.route(messages, **self._route_args(pointsman, kwargs))
        except NothingToRoute as e:
            return await self.router.acompletion(model=self._unroutable(e), messages=messages, **kwargs)
        return await self.router.acompletion(messages=messages, **self._plan(decision, kwargs))

    def completion(self, model: str, messages: list, pointsman: Optional[dict] = None, **kwargs: Any) -> Any:
        """`Router.completion`, routed by Pointsman when `model` asks for it."""
        if model not in self.route_models:
            return self.router.completion(model=model, messages=messages, **kwargs)
        if self.sync_client is None:
            raise ValueError("completion needs a Client")
        try:
            decision = self.sync_client.route(messages, **self._route_args(pointsman, kwargs))
        except NothingToRoute as e:
            return self.router.completion(model=self._unroutable(e), messages=messages, **kwargs)
        return self.router.completion(messages=messages, **self._plan(decision, kwargs))
