"""A stand-in for ``vllm serve MODEL --host H --port P [flags]`` in process-lifecycle tests.

A real HTTP server on 127.0.0.1 (standard library only, so it starts in a blink): ``GET
/health``, ``GET /v1/models``, ``POST /v1/chat/completions`` (echoes the last message).  Run as
a script (``python tests/fake_server.py serve MODEL --port P``); the ``fake_server_script``
fixture in conftest.py gives its path.  Test knobs:

  --fail-fast          print an error and exit 3 before serving
  --slow-ready N       answer /health with 503 for the first N probes
  --never-ready        always answer /health with 503
  --ignore-sigterm     ignore SIGTERM (exercises the SIGKILL fallback)
  --record-argv PATH   write the argv it was started with to PATH as JSON
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def parse(argv: list[str]) -> argparse.Namespace:
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
    return args


def handler_for(args: argparse.Namespace) -> type[BaseHTTPRequestHandler]:
    probes = {"n": 0}

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            if self.path == "/health":
                probes["n"] += 1
                ready = not args.never_ready and probes["n"] > args.slow_ready
                self._send(200 if ready else 503, {"status": "ok" if ready else "loading"})
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": args.model, "object": "model"}]})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path != "/v1/chat/completions":
                self._send(404, {"error": "not found"})
                return
            last = body["messages"][-1]["content"]
            text = "echo: " + last
            prompt, completion = len(last.split()), len(text.split())
            self._send(
                200,
                {
                    "id": "fake-1",
                    "object": "chat.completion",
                    "created": 0,
                    "model": args.model,
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": text},
                        }
                    ],
                    "usage": {
                        "prompt_tokens": prompt,
                        "completion_tokens": completion,
                        "total_tokens": prompt + completion,
                    },
                },
            )

        def log_message(self, *_: Any) -> None:
            pass

    return Handler


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.record_argv:
        with open(args.record_argv, "w") as fh:
            json.dump(argv, fh)
    print(f"fake server: {args.verb} {args.model} on {args.host}:{args.port}", flush=True)
    if args.fail_fast:
        print("fatal: simulated startup failure (no GPU here)", flush=True)
        return 3
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ThreadingHTTPServer((args.host, args.port), handler_for(args)).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
