"""Throughput of ``selfimprove serve`` on the embedded model, as ratios measured in one run.

Two real servers (uvicorn, 127.0.0.1) on the same fresh run, one plain and one recording
every exchange (``--record``), driven by the official ``openai`` client:

(a) one client, requests one after another: requests/s and mean latency;
(b) 16 concurrent clients: requests/s (the backend batches concurrent requests);
(c) recording overhead: the same single-client requests alternately to the plain and the
    recording server (alternating cancels the machine's drift), mean latency ratio.

Prints (b)/(a) and (c) (target <= 1.05x) and writes JSON.

    python bench/serve_throughput.py [--requests 16] [--max-tokens 32] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from selfimprove.config import RunConfig  # noqa: E402
from selfimprove.runner import create_run  # noqa: E402
from selfimprove.traffic import TrafficLog  # noqa: E402
from tests.servers import start_selfimprove_serve, stop_process  # noqa: E402

TOPICS = ["rain", "volcanoes", "bread", "tides", "bees", "glass", "magnets", "clouds",
          "coffee", "rivers", "stars", "salt", "wind", "ice", "paper", "copper"]


def question(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"In two sentences, how does {TOPICS[i % 16]} form "
                                        f"or work? (question {i})"}]


async def timed(api: openai.AsyncOpenAI, i: int, max_tokens: int) -> float:
    start = time.perf_counter()
    await api.chat.completions.create(model="current", messages=question(i), max_tokens=max_tokens,
                                      temperature=0)
    return time.perf_counter() - start


async def sequential(api, ids, max_tokens: int) -> list[float]:
    return [await timed(api, i, max_tokens) for i in ids]


async def concurrent(api, ids, max_tokens: int, clients: int) -> float:
    queue = list(ids)

    async def client() -> None:
        while queue:
            await timed(api, queue.pop(), max_tokens)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - start


async def measure(plain_url: str, record_url: str, n: int, max_tokens: int) -> dict:
    plain = openai.AsyncOpenAI(base_url=f"{plain_url}/v1", api_key="x", max_retries=0)
    record = openai.AsyncOpenAI(base_url=f"{record_url}/v1", api_key="x", max_retries=0)
    for api in (plain, record):  # warm both the same way
        await sequential(api, range(2), max_tokens)
    one = await sequential(plain, range(n), max_tokens)
    many_s = await concurrent(plain, range(n, n + 4 * n), max_tokens, clients=16)
    plain_lat, record_lat = [], []
    for i in range(n):  # alternate, so drift hits both sides alike
        first, second = (plain, record) if i % 2 == 0 else (record, plain)
        a = await timed(first, 1000 + i, max_tokens)
        b = await timed(second, 1000 + i, max_tokens)
        plain_lat.append(a if first is plain else b)
        record_lat.append(b if first is plain else a)
    return {
        "one_client": {"requests": n, "seconds": sum(one), "requests_per_s": n / sum(one),
                       "mean_latency_s": statistics.mean(one)},
        "sixteen_clients": {"requests": 4 * n, "seconds": many_s,
                            "requests_per_s": 4 * n / many_s},
        "recording": {"requests": n, "plain_mean_latency_s": statistics.mean(plain_lat),
                      "record_mean_latency_s": statistics.mean(record_lat)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/serve_throughput.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        plain_run, record_run = work / "plain", work / "record"
        for run in (plain_run, record_run):
            create_run(RunConfig(), run)
        plain = start_selfimprove_serve(plain_run, work)
        record = start_selfimprove_serve(record_run, work, "--record", "--flush-seconds", "1")
        try:
            result = asyncio.run(measure(plain.url, record.url, args.requests, args.max_tokens))
        finally:
            stop_process(plain.process)
            stop_process(record.process)
        recorded = TrafficLog(record_run).table().num_rows
    speedup = result["sixteen_clients"]["requests_per_s"] / result["one_client"][
        "requests_per_s"]
    rec = result["recording"]
    overhead = rec["record_mean_latency_s"] / rec["plain_mean_latency_s"]
    result.update({
        "max_tokens": args.max_tokens,
        "recorded_exchanges": recorded,
        "ratios": {"sixteen_vs_one_client_rps": speedup, "record_vs_plain_latency": overhead},
    })
    print(f"16 clients vs 1: {speedup:.2f}x requests/s "
          f"({result['sixteen_clients']['requests_per_s']:.2f} vs "
          f"{result['one_client']['requests_per_s']:.2f})")
    print(f"recording overhead: {overhead:.3f}x latency (target <= 1.05); "
          f"{recorded} exchanges recorded")
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
