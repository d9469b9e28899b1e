"""Anthropic Messages benchmark: ``/v1/messages`` through apiinone (Anthropic in, canonical chat,
the ``anthropic`` adapter out, both translations each call) beside the fake Anthropic upstream
called directly, in the same run, on loopback.

* non-streamed requests/s at 16 connections (wrk; only 2xx counts), the gateway (hold, translate,
  upstream call, translate back, settle with a request-log row) and the fake alone;
* time to first token of a stream: sequential streamed calls, time from sending the request to the
  first ``text_delta`` event, median and p90, through the gateway and straight to the fake.

``python bench/messages_bench.py [--seconds 10] [--streams 200] [--postgres]``; prints one table and
writes ``bench/results/messages-<time>.json``. Numbers on a shared machine are indicative only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # bench/run.py: processes, wrk, the CLI

MODEL = "bench-claude"
UPSTREAM_MODEL = "claude-sonnet-4-5"
FAKE_KEY = "sk-ant-bench-key"
BODY = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "Say hello in ten words."}]}
HEADERS = {"anthropic-version": "2023-06-01"}


def start_fake_anthropic(workdir: Path) -> bench.Service:
    port_file = workdir / "fake-anthropic.port"
    log_path = workdir / "fake-anthropic.log"
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.fake_anthropic", "--port-file", str(port_file),
                             "--api-key", FAKE_KEY], stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=bench.ROOT)
    service = bench.Service("fake-anthropic", proc, 0, 0.0, log_path)
    while not port_file.exists() or not port_file.read_text():
        if proc.poll() is not None or time.monotonic() > started + 60:
            service.stop()
            raise RuntimeError(f"the fake Anthropic upstream did not start; see {log_path}")
        time.sleep(0.01)
    service.port = int(port_file.read_text())
    service.ready_s = bench.wait_ready(service.port, "/_fake/config", started, proc)
    return service


def ttft_ms(client: httpx.Client, url: str, auth: str, model: str, n: int) -> list[float]:
    """Time from sending a streamed request to its first text delta, ``n`` times in a row."""
    body = {**BODY, "model": model, "stream": True}
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        with client.stream("POST", url, json=body, headers={"Authorization": auth, **HEADERS}) as response:
            response.raise_for_status()
            first = None
            for line in response.iter_lines():
                if first is None and line.startswith("data: ") and '"text_delta"' in line:
                    first = (time.perf_counter() - started) * 1000
            if first is not None:
                samples.append(first)
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": round(statistics.median(ordered), 2), "p90_ms": round(ordered[int(len(ordered) * 0.9)], 2),
            "n": len(ordered)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--postgres", action="store_true")
    opts = parser.parse_args(argv)
    results: dict[str, object] = {"connections": opts.connections, "seconds": opts.seconds}
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="apiinone-messages-bench-")))
        fake = start_fake_anthropic(workdir)
        stack.callback(fake.stop)
        models = workdir / "models.toml"
        models.write_text(f"""
[[models]]
id = "{MODEL}"
name = "Bench Claude"
type = "chat"
provider = "anthropic"
upstream_model = "{UPSTREAM_MODEL}"
pricing = {{ input_per_mtok = 300, output_per_mtok = 1500 }}
max_output_tokens = 1024

[[models.routes]]
name = "fake"
provider = "anthropic"
base_url = "http://127.0.0.1:{fake.port}"
api_key_env = "BENCH_ANTHROPIC_KEY"
""")
        database_url = stack.enter_context(bench.postgres_database()) if opts.postgres else None
        env = bench.server_env(workdir / "data", database_url, fake)
        env.update({"APIINONE_MODELS_FILE": str(models), "BENCH_ANTHROPIC_KEY": FAKE_KEY})
        if database_url:
            bench.cli(env, "db", "upgrade")
        bench.cli(env, "admin", "create-user", bench.EMAIL, "--credits", "1000000")
        key = bench.cli(env, "admin", "create-key", bench.EMAIL, "--name", "messages-bench")
        server = bench.start_server(env, workdir, "apiinone", ["--no-worker"])
        stack.callback(server.stop)
        auth = f"Bearer {key}"
        os.environ["BENCH_HEADER"] = "anthropic-version: 2023-06-01"  # bench/request.lua sends it
        direct = bench.wrk(fake.port, "/v1/messages", connections=opts.connections, seconds=opts.seconds,
                           server_pid=fake.pid, workdir=workdir, method="POST", auth=f"Bearer {FAKE_KEY}",
                           body={**BODY, "model": UPSTREAM_MODEL})
        gateway = bench.wrk(server.port, "/v1/messages", connections=opts.connections, seconds=opts.seconds,
                            server_pid=server.pid, workdir=workdir, method="POST", auth=auth, body=BODY)
        results["non_streamed"] = {"fake_direct": direct.to_json(), "apiinone": gateway.to_json()}
        with httpx.Client(timeout=30, trust_env=False) as client:
            ttft_ms(client, f"http://127.0.0.1:{server.port}/v1/messages", auth, MODEL, 10)  # warm up
            fake_ttft = summary(ttft_ms(client, f"http://127.0.0.1:{fake.port}/v1/messages", f"Bearer {FAKE_KEY}",
                                        UPSTREAM_MODEL, opts.streams))
            ours_ttft = summary(ttft_ms(client, f"http://127.0.0.1:{server.port}/v1/messages", auth, MODEL,
                                        opts.streams))
        added = round(ours_ttft["p50_ms"] - fake_ttft["p50_ms"], 2)
        results["ttft"] = {"fake_direct": fake_ttft, "apiinone": ours_ttft, "added_p50_ms": added}
    print(f"{'row':44} {'fake direct':>14} {'apiinone':>14}")
    print(f"{'non-streamed req/s @' + str(opts.connections) + ' conns':44} {direct.rps:14.0f} {gateway.rps:14.0f}")
    print(f"{'non-streamed p50 latency (ms)':44} {direct.p50_ms:14.2f} {gateway.p50_ms:14.2f}")
    print(f"{'non-2xx answers':44} {direct.non2xx:14d} {gateway.non2xx:14d}")
    print(f"{'time to first token p50 (ms)':44} {fake_ttft['p50_ms']:14.2f} {ours_ttft['p50_ms']:14.2f}")
    print(f"{'time to first token p90 (ms)':44} {fake_ttft['p90_ms']:14.2f} {ours_ttft['p90_ms']:14.2f}")
    print(f"added time to first token (p50): {added} ms")
    bench.RESULTS.mkdir(exist_ok=True)
    out = bench.RESULTS / f"messages-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"results: {out.relative_to(bench.ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
