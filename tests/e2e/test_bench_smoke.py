"""The short benchmark runs end to end: real servers, real wrk, a JSON report with every row.

It checks that the benchmark works and counted real successes; it never judges a timing (the CI
machine is shared and its figures mean nothing)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e

LOAD_ROWS = ("create", "read")
OPENAI_ROWS = ("openai", "openai_realistic")


def test_short_benchmark_reports_every_row(tmp_path: Path) -> None:
    require(shutil.which("wrk") is not None, "wrk is not installed (scripts/bench.sh installs it)")
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--short", "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert set(rows) >= {"startup", *LOAD_ROWS, *OPENAI_ROWS, "e2e", "chat", "chat_stream"}
    skipped = [name for name, row in rows.items() if isinstance(row, dict) and row.get("status") == "skipped"]
    assert not skipped, f"benchmark rows that did not run: {skipped}"

    for name in LOAD_ROWS:
        for side in ("apiinone", "upstream_direct"):
            load = rows[name][side]
            assert load["ok"] > 0, (name, side, load)
            assert load["non2xx"] == 0 and load["socket_errors"] == 0, (name, side, load)
    for name in OPENAI_ROWS:
        row = rows[name]
        assert row["status"] == "ok", row  # no skipped rows: this build has every route it measures
        for side in ("apiinone", "upstream_direct", "apiinone_1_client", "upstream_direct_1_client"):
            assert row[side]["ok"] > 0 and row[side]["non2xx"] == 0, (name, side, row[side])
    chat = rows["chat"]
    assert chat["status"] == "ok", chat
    for side in ("apiinone", "upstream_direct"):
        assert chat[side]["ok"] > 0 and chat[side]["non2xx"] == 0, (side, chat[side])
    stream = rows["chat_stream"]
    assert stream["status"] == "ok" and stream["streams"] > 0 and stream["chunks_per_stream"] > 0, stream
    assert "| POST /v1/chat/completions" in report["table"]
    assert all(row.get("status") in (None, "ok") for row in rows.values()), rows

    e2e = rows["e2e"]
    assert e2e["status"] == "ok" and e2e["created"] > 0 and e2e["succeeded"] >= e2e["created"], e2e
    startup = rows["startup"]
    assert startup["apiinone_ready_s"] > 0 and startup["apiinone_idle_rss_mb"] > 0, startup
    assert "| task creation" in report["table"] and "| end to end" in report["table"]
    assert "| task creation" in run.stdout
