"""scripts/setup.sh installs only when pyproject.toml changed (or a dev install is asked for over a
plain one), so `make run` starts without a pip run every time. Checked on a copy of the script with
a stand-in pip that records its calls."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def project(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    pip = bin_dir / "pip"
    pip.write_text(f'#!/bin/sh\necho "$*" >> "{tmp_path}/pip-calls"\n')
    pip.chmod(0o755)
    return tmp_path


def setup(root: Path, *args: str) -> list[str]:
    """Run setup.sh; the pip calls it made."""
    calls = root / "pip-calls"
    calls.unlink(missing_ok=True)
    subprocess.run(["bash", "scripts/setup.sh", *args], cwd=root, check=True, capture_output=True,
                   env={**os.environ, "PYTHON": sys.executable})
    return calls.read_text().splitlines() if calls.exists() else []


def test_pip_runs_only_when_pyproject_changes_or_dev_tools_are_missing(tmp_path: Path) -> None:
    root = project(tmp_path)
    assert setup(root) == ["install -q -e ."]       # no stamp yet
    assert setup(root) == []                        # unchanged: nothing to do
    assert setup(root, "dev") == ["install -q -e .[dev]"]  # the test tools are not there yet
    assert setup(root) == []                        # a dev install serves a plain one
    assert setup(root, "dev") == []
    (root / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "2"\n')
    assert setup(root) == ["install -q -e ."]       # the dependencies may have changed
    assert setup(root, "dev") == ["install -q -e .[dev]"]


def test_a_failed_install_leaves_no_stamp(tmp_path: Path) -> None:
    root = project(tmp_path)
    (root / ".venv" / "bin" / "pip").write_text("#!/bin/sh\nexit 3\n")
    failed = subprocess.run(["bash", "scripts/setup.sh"], cwd=root, capture_output=True,
                            env={**os.environ, "PYTHON": sys.executable})
    assert failed.returncode == 3
    assert not (root / ".venv" / ".apiinone-install").exists()
