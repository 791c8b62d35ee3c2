"""Shared fixtures. Kept small: `fake_server_script` is a tiny real HTTP server (stdlib only) that
stands in for `vllm serve` / any managed server in process-lifecycle tests."""

from __future__ import annotations

from pathlib import Path

import pytest

# A stand-in for `vllm serve MODEL --host H --port P [flags]`. It is a real server on 127.0.0.1:
# GET /health, GET /v1/models, POST /v1/chat/completions (echoes the last message). Test knobs:
#   --fail-fast          print an error and exit 3 before serving
#   --slow-ready N       answer /health with 503 for the first N probes
#   --never-ready        always answer /health with 503
#   --ignore-sigterm     ignore SIGTERM (exercises the SIGKILL fallback)
#   --record-argv PATH   write the argv it was started with to PATH as JSON
FAKE_SERVER = r"""
import argparse, json, signal, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

argv = sys.argv[1:]
p = argparse.ArgumentParser()
p.add_argument("verb")
p.add_argument("model")
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--port", type=int, required=True)
p.add_argument("--fail-fast", action="store_true")
p.add_argument("--slow-ready", type=int, default=0)
p.add_argument("--never-ready", action="store_true")
p.add_argument("--ignore-sigterm", action="store_true")
p.add_argument("--record-argv")
args, _unknown = p.parse_known_args(argv)
if args.record_argv:
    with open(args.record_argv, "w") as fh:
        json.dump(argv, fh)
print(f"fake server: {args.verb} {args.model} on {args.host}:{args.port}", flush=True)
if args.fail_fast:
    print("fatal: simulated startup failure (no GPU here)", flush=True)
    sys.exit(3)
if args.ignore_sigterm:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
probes = {"n": 0}


class Handler(BaseHTTPRequestHandler):
    def _send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            probes["n"] += 1
            ready = not args.never_ready and probes["n"] > args.slow_ready
            self._send(200 if ready else 503, {"status": "ok" if ready else "loading"})
        elif self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": args.model, "object": "model"}]})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": "not found"})
        last = body["messages"][-1]["content"]
        text = "echo: " + last
        self._send(200, {
            "id": "fake-1", "object": "chat.completion", "created": 0, "model": args.model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": len(last.split()), "completion_tokens": len(text.split()),
                      "total_tokens": len(last.split()) + len(text.split())},
        })

    def log_message(self, *a):
        pass


ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()
"""


@pytest.fixture(scope="session")
def fake_server_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fake-server") / "fake_server.py"
    path.write_text(FAKE_SERVER)
    return path
