"""
The quality contract that CI enforces: ruff lint, ruff format, mypy (strict,
configured in pyproject.toml) and the Sphinx docs built with warnings as
errors. Each tool runs from the repository root, from the test environment's
own bin directory, and its output is shown when it fails.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TIMEOUT = 600


def run(*argv: str | Path) -> None:
    """
    Run a tool from the repository root; fail with its output unless it
    exits 0.
    """
    result = subprocess.run(
        [str(arg) for arg in argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(result.args)} exited {result.returncode}\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}",
            pytrace=False,
        )


def test_ruffCheck() -> None:
    """
    ruff's lint rules (pyproject.toml) pass on the whole repository.
    """
    run(BIN / "ruff", "check", ".")


def test_ruffFormat() -> None:
    """
    The whole repository is formatted as ruff format would format it.
    """
    run(BIN / "ruff", "format", "--check", ".")


def test_mypy() -> None:
    """
    mypy, strict as configured in pyproject.toml, passes on the package and
    the tests.
    """
    run(sys.executable, "-m", "mypy")


def test_docsBuildWithoutWarnings(tmp_path: Path) -> None:
    """
    The Sphinx docs build with warnings treated as errors (into a temporary
    directory, so the tree stays clean).
    """
    if not (REPO / "docs" / "conf.py").exists():
        pytest.skip("docs/conf.py does not exist yet: there are no docs to build")
    run(
        BIN / "sphinx-build",
        "-W",
        "--keep-going",
        "-q",
        "-b",
        "html",
        "-d",
        tmp_path / "doctrees",
        REPO / "docs",
        tmp_path / "html",
    )
