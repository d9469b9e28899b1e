"""Chat benchmark: ``/v1/chat/completions`` through apiinone beside the fake OpenAI chat upstream
called directly, in the same run, on loopback.

* non-streamed requests/s at 16 connections (wrk, ``bench/request.lua``: only 2xx counts), the
  gateway (hold, upstream call, settle with a request-log row: two write transactions per call) and
  the fake alone;
* time to first token of a stream: sequential streamed calls, time from sending the request to the
  first content delta, median and p90, through the gateway and straight to the fake; the difference
  is what the gateway adds.

``python bench/chat_bench.py [--seconds 10] [--streams 200] [--postgres]``; prints one table and
writes ``bench/results/chat-<time>.json``. Numbers on a shared machine are indicative only.
"""

from __future__ import annotations

import argparse
import json
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

FAKE_CHAT = bench.ROOT / "tests" / "fakes" / "fake_openai_chat.py"
MODEL = "bench-chat"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello in ten words."}], "max_tokens": 64}


def start_fake_chat(workdir: Path) -> bench.Service:
    port_file = workdir / "fake-chat.port"
    log_path = workdir / "fake-chat.log"
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(FAKE_CHAT), "--port-file", str(port_file), "--any-key"],
                            stdout=log_path.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=bench.ROOT)
    service = bench.Service("fake-openai-chat", proc, 0, 0.0, log_path)
    while not port_file.exists() or not port_file.read_text():
        if proc.poll() is not None or time.monotonic() > started + 60:
            service.stop()
            raise RuntimeError(f"the fake chat upstream did not start; see {log_path}")
        time.sleep(0.01)
    service.port = int(port_file.read_text())
    service.ready_s = bench.wait_ready(service.port, "/_fake/config", started, proc)
    return service


def ttft_ms(client: httpx.Client, url: str, auth: str, model: str, n: int) -> list[float]:
    """Time from sending a streamed request to its first content delta, ``n`` times in a row."""
    body = {**BODY, "model": model, "stream": True}
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        with client.stream("POST", url, json=body, headers={"Authorization": auth}) as response:
            response.raise_for_status()
            first = None
            for line in response.iter_lines():
                if first is None and line.startswith("data: {") and '"content":"' in line \
                        and '"content":""' not in line:
                    first = (time.perf_counter() - started) * 1000
            if first is not None:
                samples.append(first)
    return samples


def stream_timings(client: httpx.Client, url: str, auth: str, model: str, n: int) -> list[tuple[float, float, int]]:
    """(time to first content delta, time from it to the last event, content events after the first)
    in ms for ``n`` sequential streams: the second over the third is the time per chunk."""
    body = {**BODY, "model": model, "stream": True}
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        with client.stream("POST", url, json=body, headers={"Authorization": auth}) as response:
            response.raise_for_status()
            first = last = None
            later = 0
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                now = time.perf_counter()
                if first is None:
                    if line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                        first = now
                else:
                    later += 1
                    last = now
            if first is not None and last is not None and later:
                samples.append(((first - started) * 1000, (last - first) * 1000, later))
    return samples


def chat_rows(rows: dict[str, dict[str, object]], *, seconds: float, connections: int, streams: int,
              database_url: str | None, workdir: Path) -> None:
    """The chat rows of ``bench/run.py``: non-streamed req/s at ``connections`` clients and, for
    streams, added time to first token and per-chunk overhead, each beside the fake called directly."""
    with ExitStack() as stack:
        fake = start_fake_chat(workdir)
        stack.callback(fake.stop)
        env = _chat_env(workdir, fake, database_url)
        key = bench.cli(env, "admin", "create-key", bench.EMAIL, "--name", "chat-bench")
        # no embedded worker: the data directory still holds the queued tasks of the creation row,
        # and a worker drawing them would load the machine under this row
        server = bench.start_server(env, workdir, "apiinone-chat", ["--no-worker"])
        stack.callback(server.stop)
        auth = f"Bearer {key}"
        direct = bench.wrk(fake.port, "/v1/chat/completions", connections=connections, seconds=seconds,
                           server_pid=fake.pid, workdir=workdir, method="POST", auth="Bearer sk-bench-chat",
                           body={**BODY, "model": "gpt-4o-mini"})
        ours = bench.wrk(server.port, "/v1/chat/completions", connections=connections, seconds=seconds,
                         server_pid=server.pid, workdir=workdir, method="POST", auth=auth, body=BODY)
        rows["chat"] = {"status": "ok", "connections": connections, "apiinone": ours.to_json(),
                        "upstream_direct": direct.to_json(),
                        "ratio_to_direct": round(ours.rps / direct.rps, 3) if direct.rps else None}
        with httpx.Client(timeout=30, trust_env=False) as client:
            ours_url = f"http://127.0.0.1:{server.port}/v1/chat/completions"
            fake_url = f"http://127.0.0.1:{fake.port}/v1/chat/completions"
            stream_timings(client, ours_url, auth, MODEL, 5)  # warm up
            d = stream_timings(client, fake_url, "Bearer sk-bench-chat", "gpt-4o-mini", streams)
            o = stream_timings(client, ours_url, auth, MODEL, streams)
        if not d or not o:
            rows["chat_stream"] = {"status": "failed", "note": "no stream delivered a content delta"}
            return

        def per_chunk(samples: list[tuple[float, float, int]]) -> float:
            return statistics.median(rest / chunks for _, rest, chunks in samples)

        ttft_d, ttft_o = summary([s[0] for s in d]), summary([s[0] for s in o])
        rows["chat_stream"] = {
            "status": "ok", "streams": len(o), "apiinone_ttft": ttft_o, "upstream_direct_ttft": ttft_d,
            "added_ttft_p50_ms": round(ttft_o["p50_ms"] - ttft_d["p50_ms"], 3),
            "apiinone_per_chunk_ms": round(per_chunk(o), 4), "upstream_direct_per_chunk_ms": round(per_chunk(d), 4),
            "added_per_chunk_ms": round(per_chunk(o) - per_chunk(d), 4),
            "chunks_per_stream": o[0][2],
        }


def _chat_env(workdir: Path, fake: bench.Service, database_url: str | None) -> dict[str, str]:
    models = workdir / "chat-models.toml"
    models.write_text(MODELS_TOML.format(model=MODEL, port=fake.port))
    env = bench.server_env(workdir / "data", database_url, fake)
    env.update({"APIINONE_MODELS_FILE": str(models), "BENCH_CHAT_KEY": "sk-bench-chat"})
    return env


MODELS_TOML = """
[[models]]
id = "{model}"
name = "Bench chat"
type = "chat"
provider = "openai"
upstream_model = "gpt-4o-mini"
pricing = {{ input_per_mtok = 15, output_per_mtok = 60 }}
max_output_tokens = 1024

[[models.routes]]
name = "fake"
provider = "openai"
base_url = "http://127.0.0.1:{port}/v1"
api_key_env = "BENCH_CHAT_KEY"
"""


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": round(statistics.median(ordered), 2), "p90_ms": round(ordered[int(len(ordered) * 0.9)], 2),
            "n": len(ordered)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--postgres", action="store_true")
    opts = parser.parse_args(argv)
    results: dict[str, object] = {"connections": opts.connections, "seconds": opts.seconds}
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="apiinone-chat-bench-")))
        fake = start_fake_chat(workdir)
        stack.callback(fake.stop)
        models = workdir / "models.toml"
        models.write_text(f"""
[[models]]
id = "{MODEL}"
name = "Bench chat"
type = "chat"
provider = "openai"
upstream_model = "gpt-4o-mini"
pricing = {{ input_per_mtok = 15, output_per_mtok = 60 }}
max_output_tokens = 1024

[[models.routes]]
name = "fake"
provider = "openai"
base_url = "http://127.0.0.1:{fake.port}/v1"
api_key_env = "BENCH_CHAT_KEY"
""")
        database_url = stack.enter_context(bench.postgres_database()) if opts.postgres else None
        env = bench.server_env(workdir / "data", database_url, fake)
        env.update({"APIINONE_MODELS_FILE": str(models), "BENCH_CHAT_KEY": "sk-bench-chat"})
        if database_url:
            bench.cli(env, "db", "upgrade")
        bench.cli(env, "admin", "create-user", bench.EMAIL, "--credits", "1000000")
        key = bench.cli(env, "admin", "create-key", bench.EMAIL, "--name", "chat-bench")
        server = bench.start_server(env, workdir, "apiinone", ["--no-worker"])
        stack.callback(server.stop)
        auth = f"Bearer {key}"
        direct = bench.wrk(fake.port, "/v1/chat/completions", connections=opts.connections, seconds=opts.seconds,
                           server_pid=fake.pid, workdir=workdir, method="POST", auth="Bearer sk-bench-chat",
                           body={**BODY, "model": "gpt-4o-mini"})
        gateway = bench.wrk(server.port, "/v1/chat/completions", connections=opts.connections,
                            seconds=opts.seconds, server_pid=server.pid, workdir=workdir, method="POST", auth=auth,
                            body=BODY)
        results["non_streamed"] = {"fake_direct": direct.to_json(), "apiinone": gateway.to_json()}
        with httpx.Client(timeout=30, trust_env=False) as client:
            ttft_ms(client, f"http://127.0.0.1:{server.port}/v1/chat/completions", auth, MODEL, 10)  # warm up
            fake_ttft = summary(ttft_ms(client, f"http://127.0.0.1:{fake.port}/v1/chat/completions",
                                        "Bearer sk-bench-chat", "gpt-4o-mini", opts.streams))
            ours_ttft = summary(ttft_ms(client, f"http://127.0.0.1:{server.port}/v1/chat/completions", auth, MODEL,
                                        opts.streams))
        results["ttft"] = {"fake_direct": fake_ttft, "apiinone": ours_ttft,
                           "added_p50_ms": round(ours_ttft["p50_ms"] - fake_ttft["p50_ms"], 2)}
    print(f"{'row':44} {'fake direct':>14} {'apiinone':>14}")
    print(f"{'non-streamed req/s @' + str(opts.connections) + ' conns':44} {direct.rps:14.0f} {gateway.rps:14.0f}")
    print(f"{'non-streamed p50 latency (ms)':44} {direct.p50_ms:14.2f} {gateway.p50_ms:14.2f}")
    print(f"{'non-2xx answers':44} {direct.non2xx:14d} {gateway.non2xx:14d}")
    print(f"{'time to first token p50 (ms)':44} {fake_ttft['p50_ms']:14.2f} {ours_ttft['p50_ms']:14.2f}")
    print(f"{'time to first token p90 (ms)':44} {fake_ttft['p90_ms']:14.2f} {ours_ttft['p90_ms']:14.2f}")
    print(f"added time to first token (p50): {results['ttft']['added_p50_ms']} ms")  # type: ignore[index]
    bench.RESULTS.mkdir(exist_ok=True)
    out = bench.RESULTS / f"chat-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"results: {out.relative_to(bench.ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
