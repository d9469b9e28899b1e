"""``serve --workers N`` on PostgreSQL: the synchronous image route at 1, 2 and 4 API processes.

Each N gets a fresh ``apiinone serve --workers N`` (embedded workers on, as shipped) on one fresh
PostgreSQL database, and wrk loads ``POST /v1/images/generations`` (small PNG, instant fake
upstream) with 16 clients; the upstream alone is loaded the same way in the same run. Every
request is a direct call from the API process (hold, upstream, answer, group-committed finish),
so this is the curve of the API tier itself. On a 2-core machine shared by wrk, the fake upstream
and the server, more processes than cores cannot scale; the curve says where it flattens.

    .venv/bin/python bench/scaling.py [--seconds 5] [--processes 1,2,4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (
    CREDITS,
    EMAIL,
    OPENAI_BODY,
    auth_of,
    cli,
    fake_config,
    http_request,
    postgres_database,
    server_env,
    start_fake,
    start_server,
    wrk,
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--processes", default="1,2,4")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    counts = [int(n) for n in args.processes.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="apiinone-scaling-"))
    fake = start_fake(workdir)
    rows = []
    try:
        fake_config(fake, png_bytes=0)
        body = json.dumps(OPENAI_BODY).encode()
        http_request(fake.port, "POST", "/v1/images/generations", body,
                     {"Content-Type": "application/json", "Authorization": "Bearer sk-bench-fake"})
        with postgres_database() as database_url:
            env = server_env(workdir / "data", database_url, fake)
            cli(env, "db", "upgrade")
            cli(env, "admin", "create-user", EMAIL, "--credits", str(CREDITS))
            key = cli(env, "admin", "create-key", EMAIL, "--name", "bench")
            common = {"method": "POST", "body": OPENAI_BODY, "workdir": workdir, "seconds": args.seconds,
                      "connections": args.connections}
            for n in counts:
                server = start_server(env, workdir, f"serve-{n}", ["--workers", str(n)] if n > 1 else [])
                try:
                    time.sleep(1.0)
                    # warm every process (imports, the upstream session, database connections) unrecorded
                    wrk(server.port, "/v1/images/generations", server_pid=server.pid, auth=auth_of(key),
                        **{**common, "seconds": 2.0})
                    print(f"[scaling] {n} process(es): upstream direct, then apiinone", file=sys.stderr, flush=True)
                    direct = wrk(fake.port, "/v1/images/generations", server_pid=fake.pid,
                                 auth="Bearer sk-bench-fake", **common)
                    ours = wrk(server.port, "/v1/images/generations", server_pid=server.pid, auth=auth_of(key),
                               **common)
                finally:
                    server.stop()
                rows.append({"processes": n, "apiinone": ours.to_json(), "upstream_direct": direct.to_json()})
    finally:
        fake.stop()
    report = {"meta": {"cpus": os.cpu_count(), "load_average_at_end": list(os.getloadavg()),
                       "seconds_per_load": args.seconds, "connections": args.connections}, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n| API processes | POST /v1/images/generations, {args.connections} clients | server CPU per request"
          " | upstream direct, same run |\n|---:|---:|---:|---:|")
    for row in rows:
        a, d = row["apiinone"], row["upstream_direct"]
        print(f"| {row['processes']} | {a['rps']:,.0f}/s (p50 {a['p50_ms']:.1f} ms, p99 {a['p99_ms']:.1f} ms)"
              f" | {a['server_cpu_us_per_request'] or 0:,.0f} µs | {d['rps']:,.0f}/s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
