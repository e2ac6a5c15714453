"""Model resolution: the embedded default (converted once, process-safe), paths, clear errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from huggingface_hub import constants as hub
from servers import HOST, free_port

from selfimprove.errors import ModelNotFoundError
from selfimprove.models import EMBEDDED_NAME, HUB_PROBE_TIMEOUT_S, resolve_model

MADE_UP = "someone/not-a-model"


@pytest.fixture
def online(monkeypatch):
    """No offline switch set: the hub's reachability decides."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)


@pytest.fixture
def live_hub(online, monkeypatch, tmp_path):
    """A real HTTP server on 127.0.0.1 standing in for the hub's endpoint."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((HOST, 0), lambda *a: Quiet(*a, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    monkeypatch.setattr(hub, "ENDPOINT", f"http://{HOST}:{server.server_address[1]}")
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def resolve_timed(name: str) -> tuple[ModelNotFoundError, float]:
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model(name)
    return info.value, time.monotonic() - start


def assert_lists_what_was_tried(msg: str, name: str) -> None:
    assert name in msg and "unreachable" in msg
    assert EMBEDDED_NAME in msg and "local directory" in msg and "hub cache" in msg
    assert hub.ENDPOINT in msg


def test_missing_local_directory_says_what_was_tried(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model(str(missing))
    msg = str(info.value)
    assert str(missing) in msg and "local directory" in msg and EMBEDDED_NAME in msg


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_hub_ids_pass_through_unchanged_while_the_hub_answers(live_hub):
    # from_pretrained downloads it, or reports what the hub said
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == (
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    )


def test_unreachable_hub_model_is_a_clear_error(monkeypatch):
    from selfimprove.models import load_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError) as info:
        load_tokenizer("no-such-org/no-such-model")
    assert time.monotonic() - start < 20  # not the hub client's retries
    msg = str(info.value)
    assert "no-such-org/no-such-model" in msg and "hub could not provide it" in msg
    assert "HF_HUB_OFFLINE" in msg
    assert_lists_what_was_tried(msg, "no-such-org/no-such-model")


def test_made_up_hub_id_fails_at_once_when_the_hub_is_unreachable(online):
    from selfimprove.models import load_tokenizer

    # the real hub endpoint: this machine has no network, where the hub client used to retry
    # for ~52 s before failing
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError) as info:
        load_tokenizer(MADE_UP)
    elapsed = time.monotonic() - start
    assert elapsed < 20, elapsed  # loosely: the probe gives up after a few seconds
    msg = str(info.value)
    if "unreachable" in msg:
        assert_lists_what_was_tried(msg, MADE_UP)
    else:  # run where the hub answers: it says the id does not exist, also at once
        assert MADE_UP in msg and "hub could not provide it" in msg


def test_a_closed_hub_port_is_reported_at_once(online, monkeypatch):
    monkeypatch.setattr(hub, "ENDPOINT", f"http://{HOST}:{free_port()}")
    error, elapsed = resolve_timed(MADE_UP)
    assert elapsed < 20, elapsed
    assert_lists_what_was_tried(str(error), MADE_UP)
    assert "ConnectError" in str(error)


def test_a_silent_hub_times_out_after_the_probe_timeout(online, monkeypatch):
    # accepts connections (the kernel's backlog) but never answers
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind((HOST, 0))
        silent.listen(8)
        monkeypatch.setattr(hub, "ENDPOINT", f"http://{HOST}:{silent.getsockname()[1]}")
        error, elapsed = resolve_timed(MADE_UP)
    assert HUB_PROBE_TIMEOUT_S - 0.5 < elapsed < HUB_PROBE_TIMEOUT_S + 15, elapsed
    assert_lists_what_was_tried(str(error), MADE_UP)


def test_a_cached_hub_model_resolves_to_its_snapshot_when_the_hub_is_unreachable(
    online, monkeypatch, tmp_path
):
    # the hub cache's real layout: refs/main names the commit whose snapshot holds the files
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--cached-model"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "ENDPOINT", f"http://{HOST}:{free_port()}")
    assert resolve_model("someone/cached-model") == str(snapshot.resolve())
    error, _ = resolve_timed(MADE_UP)  # the same cache without the id: a clear error
    assert str(tmp_path / "hub") in str(error)


CONVERT = """
import sys
from selfimprove.models import embedded_model_dir
print(embedded_model_dir())
"""


@pytest.mark.slow
def test_two_processes_converting_at_once_share_one_intact_model(tmp_path):
    env = {**os.environ, "SELFIMPROVE_CACHE": str(tmp_path / "cache")}
    procs = [
        subprocess.Popen([sys.executable, "-c", CONVERT], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e.decode()[-2000:] for _, e in outs]
    dirs = {o.decode().strip().splitlines()[-1] for o, _ in outs}
    assert len(dirs) == 1
    model_dir = tmp_path / "cache" / "models" / EMBEDDED_NAME
    assert str(model_dir) in dirs
    assert (model_dir / "COMPLETE").is_file() and (model_dir / "model.safetensors").is_file()
    # no temporary conversion directory is left behind
    assert [p.name for p in model_dir.parent.iterdir() if p.name.startswith(".convert-")] == []

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert getattr(model, "hf_quantizer", None) is None  # trainable, not marked quantized
    assert sum(p.numel() for p in model.parameters()) > 100_000_000
