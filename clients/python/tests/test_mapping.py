"""The OpenAI chat mapping (pointsman.openai.map_chat, route_request) and the retry policy, as
functions; the retry loop of both clients against a gRPC stub that answers with chosen status
codes (a stand-in for the network, not for Pointsman: it only counts attempts)."""
import asyncio
from concurrent import futures

import grpc
import pytest

from pointsman import AsyncClient, Client, NothingToRoute, PointsmanError, map_chat, retryable, route_request
from pointsman.client import backoff_wait
from pointsman.openai import MESSAGE_OVERHEAD_BYTES
from pointsman.v1 import router_pb2 as pb

TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


def turns(mapped):
    return [(m.role, m.content) for m in mapped.messages]


def test_roles_contents_and_requirements():
    m = map_chat(
        [
            {"role": "developer", "content": "Answer briefly."},
            {"role": "user", "content": [{"type": "text", "text": "What is on this picture"}, IMAGE, {"type": "input_text", "text": "and where?"}]},
            {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
            {"role": "function", "name": "legacy", "content": "ok"},
            {"role": "critic", "content": "an unknown role is left out"},
            {"content": "no role: left out"},
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]},
            {"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]},
            {"role": "user", "content": 42},
        ]
    )
    assert turns(m) == [
        ("system", "Answer briefly."),
        ("user", "What is on this picture\nand where?"),
        ("assistant", ""),
        ("tool", "18 C, sunny"),
        ("tool", "ok"),
        ("user", ""),
        ("user", ""),
        ("user", ""),
    ]
    assert m.dropped == 2 and m.has_text
    r = m.requirements
    assert (r.tools, r.images, r.audio, r.files) == (True, True, True, True)


@pytest.mark.parametrize(
    "request_kw, messages, expected",
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, [{"role": "user", "content": "hi"}], (True, False)),
        ({"functions": [{"name": "f"}]}, [{"role": "user", "content": "hi"}], (True, False)),
        ({"tools": []}, [{"role": "user", "content": "hi"}], (False, False)),
        ({}, [{"role": "assistant", "content": "", "function_call": {"name": "f", "arguments": "{}"}}, {"role": "user", "content": "x"}], (True, False)),
        ({}, [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}, {"type": "text", "text": "hi"}]}], (False, True)),
        ({}, [{"role": "user", "content": "hi"}], (False, False)),
    ],
)
def test_requirements(request_kw, messages, expected):
    r = map_chat(messages, **request_kw).requirements
    assert (r.tools, r.images) == expected


def test_the_tail_is_kept():
    many = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"} for i in range(1500)]
    m = map_chat(many, max_messages=1024)
    assert len(m.messages) == 1024 and m.messages[0].content == "turn 476" and m.messages[-1].content == "turn 1499"
    assert m.dropped == 476
    # Over the byte budget: the oldest go first.
    big = [{"role": "user", "content": "a" * 1000}, {"role": "assistant", "content": "b" * 1000}, {"role": "user", "content": "c" * 1000}]
    m = map_chat(big, max_request_bytes=2 * (1000 + 4 + MESSAGE_OVERHEAD_BYTES) + 10)
    assert [x.content[0] for x in m.messages] == ["b", "c"] and not m.cut
    # One message still too big: its start is kept, cut on a character boundary.
    m = map_chat([{"role": "user", "content": "é" * 1000}], max_request_bytes=4 + MESSAGE_OVERHEAD_BYTES + 101)
    assert m.cut and m.messages[0].content == "é" * 50
    assert len(m.messages[0].content.encode()) <= 101


def test_route_request_fits_the_limit_and_refuses_nothing_to_route():
    req = route_request([{"role": "user", "content": "x" * 3_000_000}], request_id="r" * 128, max_request_bytes=1 << 20)
    assert (1 << 20) - 64 < req.ByteSize() <= 1 << 20
    req = route_request([{"role": "user", "content": "hi"}], tools=[{"type": "function"}])
    assert req.requirements.tools and not req.requirements.images
    for messages in (
        [{"role": "user", "content": [IMAGE]}],
        [{"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]}, {"role": "tool", "content": "  "}],
        [{"role": "narrator", "content": "unknown roles carry no text"}],
        [],
    ):
        with pytest.raises(NothingToRoute, match="nothing to route on") as e:
            route_request(messages)
        assert isinstance(e.value, PointsmanError) and isinstance(e.value, ValueError)
    with pytest.raises(NothingToRoute):
        route_request(prompt="   ")


def test_retry_policy():
    C = grpc.StatusCode
    for call in ("Route", "ListModels"):
        assert retryable(call, C.UNAVAILABLE) and retryable(call, C.RESOURCE_EXHAUSTED)
        assert not retryable(call, C.INVALID_ARGUMENT) and not retryable(call, C.DEADLINE_EXCEEDED)
    # A report that may have landed is never sent again.
    assert retryable("Feedback", C.RESOURCE_EXHAUSTED)
    for code in (C.UNAVAILABLE, C.DEADLINE_EXCEEDED, C.CANCELLED, C.INTERNAL, C.UNKNOWN, C.ABORTED):
        assert not retryable("Feedback", code), code
    # Exponential back-off, only while the wait ends before the deadline and retries are left.
    assert [backoff_wait("Feedback", C.RESOURCE_EXHAUSTED, a, 3, 0.05, 10.0) for a in range(4)] == [0.05, 0.1, 0.2, None]
    assert backoff_wait("Route", C.RESOURCE_EXHAUSTED, 2, 3, 0.05, 0.15) is None
    assert backoff_wait("Feedback", C.UNAVAILABLE, 0, 3, 0.05, 10.0) is None


class Stub:
    """A gRPC server for pointsman.v1.Router whose calls fail with the codes queued in `fail`
    (per method) and then succeed; `calls` counts the attempts that reached it."""

    def __init__(self):
        self.fail = {"Route": [], "Feedback": []}
        self.calls = {"Route": 0, "Feedback": 0}
        stub = self

        def route(request, context):
            return stub._answer("Route", context, pb.RouteResponse(request_id=request.request_id, candidates=[pb.Candidate(model="m", provider="p")]))

        def feedback(request, context):
            return stub._answer("Feedback", context, pb.FeedbackResponse(known_request=True))

        handlers = {
            "Route": grpc.unary_unary_rpc_method_handler(route, pb.RouteRequest.FromString, pb.RouteResponse.SerializeToString),
            "Feedback": grpc.unary_unary_rpc_method_handler(feedback, pb.FeedbackRequest.FromString, pb.FeedbackResponse.SerializeToString),
        }
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("pointsman.v1.Router", handlers)])
        self.target = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def _answer(self, name, context, ok):
        self.calls[name] += 1
        if self.fail[name]:
            context.abort(self.fail[name].pop(0), f"stub says {name} fails")
        return ok


@pytest.fixture()
def stub():
    s = Stub()
    yield s
    s.server.stop(0)


def test_the_clients_retry_by_the_policy(stub):
    C = grpc.StatusCode
    with Client(stub.target, timeout=5.0, retries=3, backoff=0.01) as c:
        stub.fail["Feedback"] = [C.RESOURCE_EXHAUSTED, C.RESOURCE_EXHAUSTED]
        assert c.feedback("r1", "m", "success") is True
        assert stub.calls["Feedback"] == 3, "retried twice on RESOURCE_EXHAUSTED"
        stub.fail["Feedback"] = [C.UNAVAILABLE]
        with pytest.raises(PointsmanError) as e:
            c.feedback("r2", "m", "success")
        assert e.value.code == C.UNAVAILABLE and stub.calls["Feedback"] == 4, "a report that may have landed is not resent"
        stub.fail["Feedback"] = [C.RESOURCE_EXHAUSTED] * 4
        with pytest.raises(PointsmanError) as e:
            c.feedback("r3", "m", "success")
        assert e.value.code == C.RESOURCE_EXHAUSTED and stub.calls["Feedback"] == 8, "1 attempt + 3 retries"
        stub.fail["Feedback"] = []
        stub.fail["Route"] = [C.RESOURCE_EXHAUSTED, C.UNAVAILABLE]
        assert c.route([{"role": "user", "content": "hi"}]).model == "m"
        assert stub.calls["Route"] == 3

    async def main():
        async with AsyncClient(stub.target, timeout=5.0, retries=3, backoff=0.01) as c:
            stub.fail["Feedback"] = [C.RESOURCE_EXHAUSTED]
            assert await c.feedback("r4", "m", "success") is True
            stub.fail["Feedback"] = [C.DEADLINE_EXCEEDED]
            with pytest.raises(PointsmanError):
                await c.feedback("r5", "m", "success")

    before = stub.calls["Feedback"]
    asyncio.run(main())
    assert stub.calls["Feedback"] - before == 3


def test_route_request_names_the_session_as_ext_proc_does():
    r = route_request(prompt="hi", session_id="s-1")
    assert (r.session.id, r.session.user, r.session.escalate_only) == ("s-1", "", False)
    r = route_request(prompt="hi", user="u", conversation="c", escalate_only=True)
    assert (r.session.id, r.session.user, r.session.conversation, r.session.escalate_only) == ("", "u", "c", True)
    # A user alone names no session (each of a user's conversations is one).
    assert not route_request(prompt="hi", user="u").HasField("session")
    assert not route_request(prompt="hi").HasField("session")
