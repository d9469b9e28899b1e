"""The README's quickstart, run as a newcomer would paste it, extracted from the README itself.

The block between ``<!-- quickstart -->`` and ``<!-- /quickstart -->`` and every fenced block
right after a ``<!-- readme-example -->`` marker run in one bash session (``set -euo pipefail``, so
any failing command fails the test) in a fresh directory that looks like a new clone: its own
``./data``, a free loopback port, no ``APIINONE_*``/``OPENAI_*`` variables. The directory links
to this checkout's Makefile, scripts and ``.venv``; the install is brought up to date here first,
so the block's ``make run`` finds the install current and runs no pip.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DEFAULT_ADDRESS = "127.0.0.1:8000"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FENCE = re.compile(r"```(?P<lang>[a-z]+)\n(?P<body>.*?)\n```", re.S)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def quickstart_block(text: str) -> str:
    found = re.search(r"<!-- quickstart -->\s*```sh\n(.*?)\n```\s*<!-- /quickstart -->", text, re.S)
    assert found, "README.md has no ```sh block between <!-- quickstart --> and <!-- /quickstart -->"
    return found.group(1)


def example_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of each fenced block that follows a ``<!-- readme-example -->`` marker."""
    blocks = []
    for marker in re.finditer(r"<!-- readme-example -->\s*", text):
        fence = FENCE.match(text, marker.end())
        assert fence, f"<!-- readme-example --> at offset {marker.start()} is not followed by a fenced block"
        blocks.append((fence.group("lang"), fence.group("body")))
    return blocks


def section(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


def as_bash(lang: str, code: str) -> str:
    if lang == "sh":
        return code
    assert lang == "python", f"a README example in {lang!r}: this test runs sh and python only"
    return f".venv/bin/python - <<'README_PYTHON'\n{code}\nREADME_PYTHON"


def test_blocks_are_extracted_as_written() -> None:
    text = README.read_text()
    block = quickstart_block(text)
    assert block.startswith("make run &") and "make wait" in block
    assert DEFAULT_ADDRESS in block
    langs = [lang for lang, _ in example_blocks(text)]
    assert "python" in langs and "sh" in langs


@pytest.fixture
def fresh_clone(tmp_path: Path) -> Path:
    """A directory shaped like a new clone, sharing this checkout's (current) install."""
    venv = ROOT / ".venv"
    assert (venv / "bin" / "apiinone").exists(), "the README test runs from this checkout's .venv (make test makes it)"
    subprocess.run(["scripts/setup.sh", "dev"], cwd=ROOT, check=True)  # no-op when current
    clone = tmp_path / "clone"
    clone.mkdir()
    # No src/: should setup.sh decide to pip install here, it fails instead of repointing the install.
    for name in ("Makefile", "scripts", "pyproject.toml", ".venv"):
        (clone / name).symlink_to(ROOT / name)
    return clone


def test_readme_quickstart_and_examples_run_as_pasted(fresh_clone: Path) -> None:
    text = README.read_text()
    port = free_port()
    address = f"127.0.0.1:{port}"
    blocks = [quickstart_block(text), *(as_bash(lang, code) for lang, code in example_blocks(text))]
    script = "\n\n".join([
        "set -euo pipefail",
        "trap 'echo \"README-TEST-FAILED at line $LINENO: $BASH_COMMAND\" >&2' ERR",
        *blocks,
        f"curl -sS --fail-with-body http://{DEFAULT_ADDRESS}/api/v1/models -o models.json",
        "echo README-TEST-DONE",
    ]).replace(DEFAULT_ADDRESS, address)
    (fresh_clone / "readme.sh").write_text(script)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("APIINONE_", "OPENAI_"))}
    env |= {"PORT": str(port), "HOST": "127.0.0.1"}
    log_path = fresh_clone / "readme.log"
    with log_path.open("wb") as log:
        shell = subprocess.Popen(["bash", "readme.sh"], cwd=fresh_clone, env=env, stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = shell.wait(timeout=240)
        finally:
            # `make run &` outlives the script: stop the whole session (make, start.sh, the server)
            try:
                os.killpg(shell.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            shell.wait(timeout=5) if shell.poll() is None else None
    output = log_path.read_text(errors="replace")
    assert rc == 0 and "README-TEST-DONE" in output, output

    assert "setup:" not in output, "the quickstart ran pip although the install was current:\n" + output
    ready = [line for line in output.splitlines() if line.startswith("apiinone ready: ")]
    assert len(ready) == 1, output
    for part in (f"http://{address}", "database sqlite", f"storage file://{fresh_clone}", "models local-typeset",
                 "worker embedded",
                 f"console http://{address}/console"):
        assert part in ready[0], ready[0]
    assert "HTTP/1.1 202 Accepted" in output and "event: succeeded" in output, output
    assert "HTTP/1.1 200 OK" in output and "preference-applied: wait=30" in output.lower(), output
    assert (fresh_clone / "data" / "apiinone.db").exists()  # a fresh ./data of its own
    for image in ("logo.png", "openai-logo.png", "client-logo.png", "out.png"):
        assert (fresh_clone / image).read_bytes().startswith(PNG_MAGIC), image
    assert "saved openai-logo.png" in output and "saved to client-logo.png" in output
    for speech in ("hello.wav", "openai-speech.wav"):  # real WAV from espeak-ng (local-speech)
        data = (fresh_clone / speech).read_bytes()
        assert data[:4] == b"RIFF" and data[8:12] == b"WAVE" and len(data) > 1000, speech
    assert "200 audio/wav" in output and "saved openai-speech.wav" in output

    # "What it serves" names every model type and model the server lists.
    serves = section(text, "## What it serves", "<!-- end of the supported model types and upstreams -->")
    models = json.loads((fresh_clone / "models.json").read_text())["data"]
    assert models
    for model in models:
        assert f"`{model['id']}`" in serves, f"README 'What it serves' does not list model {model['id']}"
        assert f"`{model['type']}`" in serves, f"README 'What it serves' does not list model type {model['type']}"
