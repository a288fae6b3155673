"""The LiteLLM integration end to end: LiteLLM's SDK Router against fake OpenAI-compatible
servers on loopback, Pointsman choosing."""
import asyncio
import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm  # noqa: E402
import pytest  # noqa: E402

from conftest import CHAT_PROMPT, MATH_PROMPT, FakeModelServer, aeventually, eventually  # noqa: E402
from pointsman import AsyncClient, Client, NothingToRoute  # noqa: E402
from pointsman.litellm import PointsmanCallback, PointsmanRouter, outcome_of  # noqa: E402


@pytest.fixture()
def upstreams():
    a, b = FakeModelServer("openai"), FakeModelServer("others")
    yield a, b
    a.close()
    b.close()


def router_for(server, openai, others):
    """One LiteLLM model group per catalog model: OpenAI's on one fake server, the rest on another."""
    with Client(server.target, timeout=5.0) as c:
        catalog = c.list_models().models
    model_list = [
        {
            "model_name": m.model,
            "litellm_params": {"model": f"openai/{m.model}", "api_base": (openai if m.provider == "openai" else others).base, "api_key": "fake"},
        }
        for m in catalog
    ]
    return litellm.Router(model_list=model_list, num_retries=0)


def test_the_routed_model_is_called_fallbacks_fire_and_feedback_is_logged(server, upstreams):
    openai, others = upstreams

    async def main():
        client = AsyncClient(server.target, timeout=5.0)
        pm = PointsmanRouter(router_for(server, openai, others), client)
        # Hard math: Pointsman's primary is what the upstream is asked for.
        expected = await client.route([{"role": "user", "content": MATH_PROMPT}])
        r = await pm.acompletion(model="pointsman/auto", messages=[{"role": "user", "content": MATH_PROMPT}], pointsman={"request_id": "lt-1"})
        called = openai.seen + others.seen
        assert called == [expected.model], called
        assert r.choices[0].message.content.startswith("hello from")
        rows = await aeventually(lambda: server.feedback_rows("lt-1"))
        assert rows == [(expected.model, "success", 29)]

        # An explicit model goes straight to the router.
        await pm.acompletion(model="gpt-4o-2024-08-06", messages=[{"role": "user", "content": "hi"}])
        assert openai.seen[-1] == "gpt-4o-2024-08-06"

        # The chat prompt's primary is not an OpenAI model; with the other upstream failing,
        # LiteLLM walks Pointsman's fallbacks until the OpenAI one answers, and every attempt
        # is reported.
        plan = await client.route([{"role": "user", "content": CHAT_PROMPT}], max_fallbacks=8)
        order = [c.model for c in plan.candidates]
        providers = [c.provider for c in plan.candidates]
        assert providers[0] != "openai" and "openai" in providers, list(zip(order, providers))
        first_openai = providers.index("openai")
        others.failing = True
        before = len(others.seen)
        r = await pm.acompletion(
            model="pointsman/auto",
            messages=[{"role": "user", "content": CHAT_PROMPT}],
            pointsman={"request_id": "lt-2", "max_fallbacks": 8},
        )
        assert r.choices[0].message.content == "hello from openai"
        assert others.seen[before:] == order[:first_openai], "the failing upstream was tried in Pointsman's order"
        assert openai.seen[-1] == order[first_openai]
        rows = await aeventually(lambda: (lambda r: r if len(r) == first_openai + 1 else None)(server.feedback_rows("lt-2")))
        assert rows == [(m, "server_error", None) for m in order[:first_openai]] + [(order[first_openai], "success", 29)]
        await client.close()

    asyncio.run(main())


def test_sync_completion(server, upstreams):
    openai, others = upstreams
    with Client(server.target, timeout=5.0) as c:
        pm = PointsmanRouter(router_for(server, openai, others), sync_client=c)
        expected = c.route([{"role": "user", "content": MATH_PROMPT}])
        r = pm.completion(model="pointsman/auto", messages=[{"role": "user", "content": MATH_PROMPT}], pointsman={"request_id": "lt-sync-1"})
        assert (openai.seen + others.seen) == [expected.model]
        assert r.choices[0].message.content.startswith("hello from")
        assert eventually(lambda: server.feedback_rows("lt-sync-1")) == [(expected.model, "success", 29)]
    assert sum(isinstance(c, PointsmanCallback) for c in litellm.callbacks) == 1, "one callback serves every router"


def test_outcomes_of_failures():
    assert outcome_of(litellm.RateLimitError("slow down", llm_provider="openai", model="m")) == "rate_limited"
    assert outcome_of(litellm.Timeout("late", model="m", llm_provider="openai")) == "timeout"
    assert outcome_of(litellm.BadRequestError("bad", model="m", llm_provider="openai")) is None
    assert outcome_of(litellm.InternalServerError("down", llm_provider="openai", model="m")) == "server_error"


def test_added_latency(server, upstreams):
    """What routing adds to a LiteLLM call: p50 of the same requests with and without Pointsman
    (new prompts, so every one is encoded), against a fake server that answers at once. Printed
    (`pytest -s`), not asserted."""
    import statistics
    import time

    openai, others = upstreams

    async def main():
        client = AsyncClient(server.target, timeout=5.0)
        router = router_for(server, openai, others)
        pm = PointsmanRouter(router, client)
        with_pm, without = [], []
        for i in range(40):
            messages = [{"role": "user", "content": f"{CHAT_PROMPT} (variant {i})"}]
            t = time.perf_counter()
            r = await pm.acompletion(model="pointsman/auto", messages=messages)
            with_pm.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            await router.acompletion(model=r.model if r.model in router.get_model_names() else "gpt-4o-2024-08-06", messages=messages)
            without.append((time.perf_counter() - t) * 1000)
        await client.close()
        return statistics.median(with_pm), statistics.median(without)

    a, b = asyncio.run(main())
    assert a > 0 and b > 0
    print(f"\nLiteLLM Router p50 over 40 calls: {a:.2f} ms with Pointsman routing, {b:.2f} ms without: +{a - b:.2f} ms")


def test_agent_turns_are_routed_and_textless_requests_go_to_the_default_model(server, upstreams):
    openai, others = upstreams
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}]
    agent = [
        {"role": "user", "content": "Should I pack an umbrella for Paris tomorrow?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "rain, 80%"},
    ]
    image_only = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]

    async def main():
        client = AsyncClient(server.target, timeout=10.0)
        pm = PointsmanRouter(router_for(server, openai, others), client, default_model="gpt-4o-2024-08-06")
        expected = await client.route(agent, tools=tools)
        r = await pm.acompletion(model="pointsman/auto", messages=agent, tools=tools, pointsman={"request_id": "lt-agent-1"})
        assert r.choices[0].message.content.startswith("hello from")
        sent = (openai.bodies + others.bodies)[-1]
        assert sent["model"] == expected.model and sent["tools"][0]["function"]["name"] == "get_weather"
        assert await aeventually(lambda: server.feedback_rows("lt-agent-1")) == [(expected.model, "success", 29)]
        # No text to route on: the default model, without a Route call and without a report.
        received = server.metric("pointsman_route_received_total")
        await pm.acompletion(model="pointsman/auto", messages=image_only)
        assert openai.seen[-1] == "gpt-4o-2024-08-06"
        assert server.metric("pointsman_route_received_total") == received
        await client.close()

    asyncio.run(main())
    # Without a default model the caller hears why.
    with Client(server.target, timeout=5.0) as c:
        pm = PointsmanRouter(router_for(server, openai, others), sync_client=c)
        with pytest.raises(NothingToRoute, match="nothing to route on"):
            pm.completion(model="pointsman/auto", messages=image_only)
