"""The fuzz stage: schemathesis over ``/openapi.json`` against a real ``apiinone serve`` on loopback
(fresh data dir, an admin's API key), bounded and seeded, with the four checks the spec must pass:
no 5xx for any input, only documented status codes, bodies that match the documented schemas and
the documented content types. Any failure fails the test suite (never a skip)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.cluster import free_port
from tests.fakes.fake_openai import FakeOpenAI

pytestmark = pytest.mark.e2e

CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance"
SEED = 20261201
MAX_EXAMPLES = int(os.environ.get("APIINONE_FUZZ_EXAMPLES", "30"))


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "apiinone.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    return done.stdout.strip()


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    """gpt-image-1.5-official served by the fake OpenAI, so every catalog model is available (a 503
    ``model_unavailable`` is right for an unconfigured model, but the check counts every 5xx)."""
    with FakeOpenAI() as fake:
        yield fake


def models_served_here(path: Path) -> Path:
    """A catalog file that launches only the models this test can serve: the offline ones and those
    behind the fake OpenAI. The others would answer their (documented) 503 ``model_unavailable``,
    which the not-a-server-error check counts like any 5xx; and nothing may call the internet."""
    from apiinone.domain.catalog import Catalog

    lines = []
    for spec in Catalog.load().models.values():
        envs = {r.api_key_env for r in spec.effective_routes()}
        providers = {r.provider for r in spec.effective_routes()}
        if (providers <= {"openai"} and envs <= {None, "OPENAI_API_KEY"}) or all(p.startswith("local") for p in providers):
            continue
        lines.append(f'[[models]]\nid = "{spec.id}"\nlaunched = false\n')
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def test_schemathesis_finds_no_failures(tmp_path: Path, upstream: FakeOpenAI) -> None:
    st = Path(sys.executable).parent / "st"
    assert st.exists(), "schemathesis is a dev dependency: run scripts/setup.sh dev"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APIINONE_", "OPENAI_"))}
    env.update({"APIINONE_DATA_DIR": str(tmp_path / "data"), "APIINONE_ENV": "test", "APIINONE_LOG_JSON": "true",
                "APIINONE_PUBLIC_URL": f"http://127.0.0.1:{port}", "OPENAI_API_KEY": upstream.api_key,
                "OPENAI_BASE_URL": upstream.base_url,
                "APIINONE_MODELS_FILE": str(models_served_here(tmp_path / "models.toml"))})
    _cli(env, "admin", "create-user", "fuzz@example.com", "--password", "password123", "--credits", "100000",
         "--admin")
    key = _cli(env, "admin", "create-key", "fuzz@example.com").splitlines()[-1]
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "apiinone.cli", "serve", "--port", str(port)], env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, log_path.read_text()[-4000:]
            time.sleep(0.2)
        run = subprocess.run(
            [str(st), "run", f"http://127.0.0.1:{port}/openapi.json", "--checks", CHECKS,
             "--header", f"Authorization: Bearer {key}", "--seed", str(SEED), "--max-examples", str(MAX_EXAMPLES),
             "--workers", "1", "--request-timeout", "30", "--no-color"],
            env={**env, "SCHEMATHESIS_HOOKS": ""}, capture_output=True, text=True, timeout=420, check=False,
            cwd=tmp_path)  # its crash cache stays in the test's folder: every run starts from the seed alone
    finally:
        server.terminate()
        server.wait(timeout=30)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-8000:]
    assert " passed" in output and "generated" in output, output[-2000:]
    server_log = log_path.read_text()
    assert "unhandled_error" not in server_log, server_log[-4000:]
