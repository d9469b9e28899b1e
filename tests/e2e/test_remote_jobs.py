"""Remote jobs hold no worker slot, and survive ``kill -9`` of the worker that follows them.

* One worker slot (concurrency 1): many long video jobs are in flight upstream (a fal fake that
  holds them) while image tasks still start at once and finish.
* A real ``apiinone worker`` process is killed with SIGKILL while its jobs run upstream; after a
  restart every job is followed to its end: nothing lost, nothing submitted twice, each charged
  once (the ledger has one capture per task and nothing left held). On SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AppHarness, make_settings
from tests.fakes.fake_media import FakeMediaUpstream
from tests.waiting import until

pytestmark = pytest.mark.e2e

VIDEO = "/api/v1/videos/generations"
KEY_ENV = "FAKE_FAL_KEY_E2E"
JOBS = 12


def catalog(path: Path, fake: FakeMediaUpstream) -> Path:
    path.write_text(f'''
[[models]]
id = "fake-kling"
name = "Fake Kling"
type = "video"
provider = "fal"
upstream_model = "fal-ai/kling-video/v2.1/standard/text-to-video"
base_url = "{fake.base_url}"
api_key_env = "{KEY_ENV}"
durations = [5, 10]
pricing = {{ per_second = {{ "720p" = 2 }} }}
''')
    return path




def all_followed(fake: FakeMediaUpstream, count: int, polls: int = 1) -> Any:
    async def check() -> bool:
        jobs = list(fake.state.jobs.values())
        return len(jobs) >= count and all(job.polls >= polls for job in jobs)
    return check


async def test_one_slot_follows_many_videos_while_images_still_start(tmp_path: Path, sqlite_url: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeMediaUpstream("fal") as fake:
        fake.configure(hold=True)
        monkeypatch.setenv(KEY_ENV, fake.api_key)
        settings = make_settings(tmp_path, sqlite_url, models_file=catalog(tmp_path / "models.toml", fake),
                                 egress_allow="127.0.0.0/8", worker_concurrency=1, remote_job_poll_s=0.05,
                                 remote_job_min_interval_s=0.05, remote_job_max_interval_s=0.2)
        async with AppHarness(settings) as harness:
            caller = await harness.caller(credits=1000)
            videos = [(await caller.post(VIDEO, json={"model": "fake-kling", "prompt": f"clip {i}"})).json()["task_id"]
                      for i in range(JOBS)]
            await until(all_followed(fake, JOBS, polls=2), "every video to be submitted and followed")
            assert harness.container.worker is not None and harness.container.worker.running_count == 0
            image = await caller.post("/api/v1/images/generations", json={"model": "local-typeset", "prompt": "hi"},
                                      headers={"Prefer": "wait=30"})
            assert image.status_code == 200 and image.json()["status"] == "succeeded", image.text
            statuses = [(await caller.get(f"/api/v1/tasks/{t}")).json()["status"] for t in videos]
            assert statuses == ["running"] * JOBS  # still rendering upstream, no slot held
            fake.release()
            for task_id in videos:
                done = await caller.wait_for(task_id, timeout=60)
                assert done["status"] == "succeeded" and done["credits"]["charged"] == 10, done
            account = (await caller.get("/api/v1/account")).json()["credits"]
            assert account == {"balance": 1000 - 10 * JOBS - 1, "held": 0, "available": 1000 - 10 * JOBS - 1}
            assert len(fake.state.jobs) == JOBS


class WorkerProcess:
    def __init__(self, tmp_path: Path, database_url: str, models_file: Path, key: str) -> None:
        self.log_path = tmp_path / "worker.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("APIINONE_", "OPENAI_"))}
        self.env |= {
            "APIINONE_ENV": "test", "APIINONE_DATA_DIR": str(tmp_path / "data"), "APIINONE_DATABASE_URL": database_url,
            "APIINONE_PUBLIC_URL": "http://testserver", "APIINONE_SECRET_KEY": "test-secret-key-not-a-placeholder",
            "APIINONE_MODELS_FILE": str(models_file), "APIINONE_EGRESS_ALLOW": "127.0.0.0/8", KEY_ENV: key,
            "APIINONE_WORKER_POLL_S": "0.1", "APIINONE_REMOTE_JOB_POLL_S": "0.05",
            "APIINONE_REMOTE_JOB_MIN_INTERVAL_S": "0.05", "APIINONE_REMOTE_JOB_MAX_INTERVAL_S": "0.2",
            "APIINONE_REMOTE_JOB_LEASE_S": "2", "APIINONE_TASK_LEASE_S": "3",
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "apiinone.cli", "worker", "--node", "w1",
                                             "--concurrency", "2"], env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""


async def test_kill_9_of_the_worker_loses_no_job_and_charges_each_once(tmp_path: Path, database_url: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeMediaUpstream("fal") as fake:
        fake.configure(hold=True)
        monkeypatch.setenv(KEY_ENV, fake.api_key)
        models_file = catalog(tmp_path / "models.toml", fake)
        settings = make_settings(tmp_path, database_url, models_file=models_file, egress_allow="127.0.0.0/8")
        worker = WorkerProcess(tmp_path, database_url, models_file, fake.api_key)
        async with AppHarness(settings, embedded_worker=False) as api:
            caller = await api.caller(credits=500)
            tasks = [(await caller.post(VIDEO, json={"model": "fake-kling", "prompt": f"clip {i}", "duration_s": 10})
                      ).json()["task_id"] for i in range(JOBS)]
            try:
                worker.start()
                await until(all_followed(fake, JOBS, polls=2), "every job to be submitted and followed")
                worker.kill()  # SIGKILL while every job is still rendering upstream (and some looks leased)
                assert worker.process is not None and worker.process.returncode == -signal.SIGKILL
                fake.release()  # the jobs end upstream while no worker is alive
                worker.start()
                for task_id in tasks:
                    done = await caller.wait_for(task_id, timeout=90)
                    assert done["status"] == "succeeded", (done, worker.log_tail())
                    assert done["credits"] == {"price": 20, "charged": 20}
            finally:
                worker.kill()
            assert len(fake.state.jobs) == JOBS  # nothing was submitted twice
            account = (await caller.get("/api/v1/account")).json()["credits"]
            assert account == {"balance": 500 - 20 * JOBS, "held": 0, "available": 500 - 20 * JOBS}
            ledger = (await caller.get("/api/v1/account/ledger?limit=100")).json()["data"]
            captures = [e["task_id"] for e in ledger if e["kind"] == "capture"]
            assert sorted(captures) == sorted(tasks)  # one capture per task, no more
