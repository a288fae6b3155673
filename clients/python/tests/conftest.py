"""Fixtures: the real Pointsman server (the release binary of this repo) on loopback, with its
decision log in a temporary folder, and fake OpenAI-compatible model servers."""
import http.server
import json
import re
import urllib.request
import os
import pathlib
import socket
import sqlite3
import subprocess
import threading
import time

import grpc
import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
BIN = pathlib.Path(os.environ.get("POINTSMAN_BIN", REPO / "target/release/pointsman"))

MATH_PROMPT = (
    "Let $S$ be the set of positive integers $n$ such that $n^2 + 12n - 2007$ is a perfect square. "
    "Find the remainder when the sum of all elements of $S$ is divided by 1000."
)
CHAT_PROMPT = "hey! what's a fun thing to do with friends on a rainy saturday afternoon?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running `pointsman serve`."""

    def __init__(self, tmp: pathlib.Path, port: int = 0, wait: bool = True):
        assert BIN.is_file(), f"{BIN} is missing: build it (cargo build --release) or set POINTSMAN_BIN"
        self.db = tmp / "decisions.db"
        text = (REPO / "config/pointsman.toml").read_text()
        text = text.replace('"../models/', f'"{REPO}/models/').replace('"../var/decisions.db"', json.dumps(str(self.db)))
        cfg = tmp / "pointsman.toml"
        cfg.write_text(text)
        self.port = port or free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.admin = f"127.0.0.1:{free_port()}"
        self.proc = subprocess.Popen(
            [str(BIN), "--config", str(cfg), "serve", "--listen", self.target, "--admin-listen", self.admin],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if wait:
            self.wait_ready()

    def wait_ready(self, seconds: float = 120) -> None:
        from pointsman import Client, PointsmanError

        deadline = time.monotonic() + seconds
        with Client(self.target, timeout=2.0, retries=0) as c:
            while True:
                try:
                    c.list_models()
                    return
                except PointsmanError:
                    assert self.proc.poll() is None, "pointsman exited while starting"
                    assert time.monotonic() < deadline, "pointsman did not serve in time"
                    time.sleep(0.05)

    def metric(self, name: str) -> float:
        """A sample of the server's /metrics page (0 when absent), e.g.
        'pointsman_route_received_total' or 'pointsman_route_requests_total{result="ok"}'."""
        with urllib.request.urlopen(f"http://{self.admin}/metrics", timeout=10) as r:
            page = r.read().decode()
        m = re.search(rf"^{re.escape(name)} (\S+)$", page, re.M)
        return float(m.group(1)) if m else 0.0

    def decision_rows(self, request_id: str) -> list:
        """The decision log's rows of `request_id` (as dicts; the columns are the log's)."""
        if not self.db.exists():
            return []
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute("SELECT * FROM decisions WHERE request_id = ?", (request_id,))]

    def feedback_rows(self, request_id: str) -> list:
        """(model, outcome, output_tokens) of `request_id`'s reports in the decision log."""
        if not self.db.exists():
            return []
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
            return conn.execute(
                "SELECT model, outcome, output_tokens FROM feedback WHERE request_id = ? ORDER BY id", (request_id,)
            ).fetchall()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("pointsman"))
    yield s
    s.stop()


def eventually(f, seconds: float = 10):
    deadline = time.monotonic() + seconds
    while True:
        v = f()
        if v:
            return v
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


async def aeventually(f, seconds: float = 10):
    """`eventually` for async tests: yields to the event loop (where LiteLLM's callbacks run)."""
    import asyncio

    deadline = time.monotonic() + seconds
    while True:
        v = f()
        if v:
            return v
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


class FakeModelServer:
    """An OpenAI-compatible chat endpoint on loopback that records the models asked for and
    can be told to fail (HTTP 500)."""

    def __init__(self, name: str):
        self.name, self.seen, self.bodies, self.failing = name, [], [], False
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                outer.seen.append(body["model"])
                outer.bodies.append(body)
                if outer.failing:
                    out, status = json.dumps({"error": {"message": f"{outer.name} is down", "type": "server_error"}}), 500
                else:
                    status = 200
                    out = json.dumps(
                        {
                            "id": "chatcmpl-1",
                            "object": "chat.completion",
                            "created": int(time.time()),
                            "model": body["model"],
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": f"hello from {outer.name}"}, "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": 13, "completion_tokens": 29, "total_tokens": 42},
                        }
                    )
                data = out.encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.http.server_address[1]}/v1"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self):
        self.http.shutdown()
