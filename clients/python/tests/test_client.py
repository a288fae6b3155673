"""The typed client against the real server."""
import asyncio
import json
import pathlib
import subprocess
import sys
import threading

import grpc
import pytest

from conftest import CHAT_PROMPT, MATH_PROMPT, REPO, Server, eventually, free_port
from pointsman import AsyncClient, Client, NothingToRoute, PointsmanError


def user(text):
    return [{"role": "user", "content": text}]


def test_route_feedback_and_list_models(server):
    with Client(server.target, timeout=5.0) as c:
        math = c.route(user(MATH_PROMPT), request_id="py-math-1", max_fallbacks=2)
        chat = c.route(user(CHAT_PROMPT))
        assert math.request_id == "py-math-1", "the caller's request id is carried through"
        assert len(chat.request_id) == 36, "a UUID when none is given"
        assert math.model != chat.model, "hard math and chit-chat go to different models"
        assert len(math.candidates) == 3 and math.fallbacks == [c.model for c in math.candidates[1:]]
        assert all(c.predicted_cost_usd > 0 and 0 <= c.predicted_quality <= 1 for c in math.candidates)
        # OpenAI content parts are accepted.
        parts = c.route([{"role": "user", "content": [{"type": "text", "text": MATH_PROMPT}]}])
        assert parts.model == math.model
        # OpenAI's `developer` role (the newer name of `system`) is accepted.
        dev = c.route([{"role": "developer", "content": "Answer briefly."}, {"role": "user", "content": MATH_PROMPT}])
        assert dev.model == math.model
        assert c.feedback(math.request_id, math.model, "success", latency_ms=812.0, output_tokens=345) is True
        rows = eventually(lambda: server.feedback_rows("py-math-1"))
        assert rows == [(math.model, "success", 345)]
        models = c.list_models().models
        assert any(m.model == math.model for m in models)


def test_errors_name_the_field_and_deadlines_hold(server):
    with Client(server.target, timeout=5.0) as c:
        with pytest.raises(PointsmanError) as e:
            c.route(user(MATH_PROMPT), cost_weight=1.5)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "cost_weight" in e.value.message and "1.5" in e.value.message
        with pytest.raises(PointsmanError) as e:
            c.route(user(MATH_PROMPT), max_cost_usd=1e-9)
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION and "max_cost_usd" in e.value.message
        with pytest.raises(ValueError, match="outcome must be one of"):
            c.feedback("x", "y", "great")
        with pytest.raises(PointsmanError) as e:
            c.route(user(MATH_PROMPT + " (a new prompt, not cached)"), timeout=1e-4)
        assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_async_client(server):
    async def main():
        async with AsyncClient(server.target, timeout=5.0) as c:
            d = await c.route(prompt=MATH_PROMPT, request_id="py-async-1")
            assert d.request_id == "py-async-1"
            assert await c.feedback(d.request_id, d.model, "timeout", latency_ms=30000.0) is True
            return d

    d = asyncio.run(main())
    assert eventually(lambda: server.feedback_rows("py-async-1")) == [(d.model, "timeout", None)]


def test_unavailable_is_retried_until_the_server_is_up(tmp_path):
    port = free_port()
    # Nothing listens yet: without retries the call fails UNAVAILABLE at once.
    with Client(f"127.0.0.1:{port}", timeout=1.0, retries=0) as c:
        with pytest.raises(PointsmanError) as e:
            c.list_models()
        assert e.value.code == grpc.StatusCode.UNAVAILABLE
    # A call made before the server starts succeeds once it serves (UNAVAILABLE while it
    # binds and while its models load are both retried).
    result = {}

    def call():
        with Client(f"127.0.0.1:{port}", timeout=60.0, retries=12, backoff=0.05) as c:
            try:
                result["decision"] = c.route(user(CHAT_PROMPT))
            except PointsmanError as e:
                result["error"] = e

    t = threading.Thread(target=call)
    t.start()
    s = Server(tmp_path, port=port, wait=False)
    try:
        t.join(90)
        assert "decision" in result, result
    finally:
        s.stop()


def test_generated_stubs_match_the_proto(tmp_path):
    """The committed stubs are what grpcio-tools generates from proto/ today."""
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", str(REPO / "proto"), f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}",
         f"--pyi_out={tmp_path}", str(REPO / "proto/pointsman/v1/router.proto")],
        check=True,
    )
    committed = pathlib.Path(__file__).resolve().parents[1] / "src/pointsman/v1"
    for name in ["router_pb2.py", "router_pb2.pyi", "router_pb2_grpc.py"]:
        assert (tmp_path / "pointsman/v1" / name).read_text() == (committed / name).read_text(), (
            f"{name} is stale: regenerate with clients/python/generate.sh"
        )


# OpenAI chat requests as agents and apps send them (pointsman.openai.map_chat): routed, never
# refused by the server; a conversation with no text is not sent at all.

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
AGENT = [
    {"role": "system", "content": "You are a travel assistant. Use the tools."},
    {"role": "user", "content": "Should I pack an umbrella for Paris tomorrow?"},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"forecast": "rain", "probability": 0.8}'},
]
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


def ok_routes(server):
    return server.metric('pointsman_route_requests_total{result="ok"}')


def requirements(server, request_id):
    """The requirements the decision log recorded for `request_id`'s decision."""
    rows = eventually(lambda: server.decision_rows(request_id))
    return json.loads(rows[0]["constraints"])["requirements"]


def test_a_tool_calling_agent_conversation_is_routed(server):
    with Client(server.target, timeout=10.0) as c:
        before = ok_routes(server)
        d = c.route(AGENT, tools=TOOLS, request_id="py-agent-1")
        assert d.request_id == "py-agent-1" and d.model
        assert d.raw is not None
        # The legacy shapes too: a function_call turn and a function result.
        legacy = AGENT[:2] + [
            {"role": "assistant", "content": "", "function_call": {"name": "get_weather", "arguments": "{}"}},
            {"role": "function", "name": "get_weather", "content": "rain"},
        ]
        c.route(legacy, functions=[{"name": "get_weather"}])
        assert ok_routes(server) == before + 2, "the server routed both"
        assert requirements(server, "py-agent-1") == {"tools": True, "images": False, "audio": False, "files": False}


def test_an_image_only_turn_is_routed_and_a_conversation_without_text_is_not_sent(server):
    with Client(server.target, timeout=10.0) as c:
        before = ok_routes(server)
        received = server.metric("pointsman_route_received_total")
        # The latest turn is only an image: routed on the conversation's text.
        d = c.route(
            [
                {"role": "user", "content": "I will send you a photo of a plant. Tell me what it is and how to care for it."},
                {"role": "assistant", "content": "Sure, send it."},
                {"role": "user", "content": [IMAGE]},
            ],
            request_id="py-image-1",
        )
        assert d.model and ok_routes(server) == before + 1
        assert requirements(server, "py-image-1") == {"tools": False, "images": True, "audio": False, "files": False}
        # Nothing but images: no text to route on, so no call (the caller picks a default).
        with pytest.raises(NothingToRoute):
            c.route([{"role": "user", "content": [IMAGE]}])
        assert server.metric("pointsman_route_received_total") == received + 1, "the image-only conversation was not sent"


def test_300_turns_and_a_600_kb_prompt_are_routed(server):
    with Client(server.target, timeout=30.0) as c:
        before = ok_routes(server)
        chat = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}: tell me more about the history of Rome"} for i in range(300)]
        assert c.route(chat).model
        big = "Summarise the following report. " + ("The committee reviewed the quarterly figures in detail. " * 11000)
        assert len(big.encode()) > 600_000
        assert c.route([{"role": "user", "content": big}]).model
        # Beyond the client's limits the tail is sent: 3,000 turns and a 3 MB prompt.
        assert c.route([{"role": "user", "content": f"question {i}"} for i in range(3000)]).model
        assert c.route([{"role": "user", "content": big * 5}]).model
        assert ok_routes(server) == before + 4



def test_openrouter_provider_preferences_and_needs_map_onto_the_request():
    from pointsman.client import route_request

    req = route_request(
        user("hi"),
        tools=[{"type": "function", "function": {"name": "f"}}],
        response_format={"type": "json_schema", "json_schema": {"name": "x"}},
        reasoning={"effort": "high"},
        max_tokens=900,
        provider={
            "order": ["deepinfra"], "ignore": ["azure"], "allow_fallbacks": False,
            "sort": {"by": "throughput", "partition": "none"}, "max_price": {"prompt": 1, "completion": 2},
            "quantizations": ["fp8"], "data_collection": "deny", "zdr": True, "require_parameters": True,
            "preferred_max_latency": {"p90": 1.5}, "preferred_min_throughput": 40,
        },
    )
    r, p = req.requirements, req.provider
    assert (r.tools, r.json_schema, r.reasoning_effort, r.max_output_tokens) == (True, True, "high", 900)
    assert list(p.order) == ["deepinfra"] and list(p.ignore) == ["azure"] and p.allow_fallbacks is False
    assert (p.sort, p.partition, p.max_price.prompt, p.max_price.completion) == ("throughput", "none", 1.0, 2.0)
    assert (p.data_collection, p.zdr, p.require_parameters) == ("deny", True, True)
    assert p.preferred_max_latency.p90 == 1.5 and p.preferred_min_throughput.p50 == 40.0
    assert not p.preferred_max_latency.HasField("p50")
    with pytest.raises(ValueError, match="provider.preferred_max_latency.p95"):
        route_request(user("hi"), provider={"preferred_max_latency": {"p95": 1}})


def test_latency_limit_and_endpoint_feedback_map_onto_the_requests():
    from pointsman.client import feedback_request, route_request

    req = route_request(user("hi"), max_latency_ms=1500, max_latency_percentile="p90")
    assert (req.max_latency.ms, req.max_latency.percentile) == (1500.0, "p90")
    assert not route_request(user("hi")).HasField("max_latency")
    f = feedback_request("r", "m", "success", latency_ms=900, output_tokens=100, provider="deepinfra", ttft_ms=200, generation_ms=700)
    assert (f.provider, f.ttft_ms, f.generation_ms) == ("deepinfra", 200.0, 700.0)
    assert not feedback_request("r", "m", "timeout").HasField("ttft_ms")


def test_endpoints_come_back_with_the_attempt_order(server):
    with Client(server.target, timeout=5.0) as c:
        d = c.route(user(MATH_PROMPT), allowed_models=["Meta-Llama-3.1-70B-Instruct"], provider={"ignore": ["deepinfra"]})
        assert d.provider == "hyperbolic"
        assert d.attempts == [("Meta-Llama-3.1-70B-Instruct", "hyperbolic"), ("Meta-Llama-3.1-70B-Instruct", "together")]
        with pytest.raises(PointsmanError, match="provider.sort"):
            c.route(user(MATH_PROMPT), provider={"sort": "fastest"})
