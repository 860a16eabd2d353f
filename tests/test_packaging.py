"""
Packaging: both C{pip install .} and C{pip install -e .} must make
C{twistd --help} list C{taskservice}, in fresh virtual environments, run
from a directory that is not the source tree.

This is the easiest thing to break silently: C{twisted/plugins/} is a
namespace portion (no C{__init__.py}: one would shadow Twisted's own) that
setuptools' C{find:} drops unless listed and that its default editable
finder hides, and a test run from the repository
would still find the plugin through the working directory.

To stay fast and offline, each fresh venv is made without pip and gets a
C{.pth} line that appends the test environment's own site-packages (a plain
path line: the test environment's own C{.pth} files, among them its
editable install of this project, are not processed). pip, Twisted and
setuptools then come from there; C{pip install --no-index --no-deps
--no-build-isolation} downloads nothing. The project is installed from a
copy of the source tree, so that C{build/}, C{*.egg-info} and
C{dropin.cache} land in the copy, never in the repository.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TWISTD = BIN / "twistd"
# setuptools builds wheels on its own (without the "wheel" package) since 70.1.
SETUPTOOLS_MIN = (70, 1)
TIMEOUT = 120

_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    "dropin.cache",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
    "_build",
    "_trial_temp",
)

_FIND_PLUGIN = textwrap.dedent(
    """
    import json
    import taskservice
    from twisted.application.service import IServiceMaker
    from twisted.plugin import getPlugins
    import twisted.plugins
    found = [p for p in getPlugins(IServiceMaker) if p.tapname == "taskservice"]
    plugin = __import__("twisted.plugins.taskservice_plugin", fromlist=["_"])
    print(json.dumps({
        "found": [p.module for p in found],
        "taskservice": taskservice.__file__,
        "plugin": plugin.__file__,
    }))
    """
)


def _environment() -> dict[str, str]:
    """
    This process's environment, less what could put the source tree on the
    path of the fresh interpreters.
    """
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE"):
        env.pop(name, None)
    env["PYTHONNOUSERSITE"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(argv: list[str | Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(arg) for arg in argv],
        cwd=cwd,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    return result


def _check(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (
        f"{result.args} exited {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    return result.stdout


def _copySource(destination: Path) -> Path:
    """
    Copy the source tree, without version control, virtual environments,
    build products and caches, to C{destination}.
    """
    shutil.copytree(REPO, destination, ignore=_IGNORE, symlinks=True)
    return destination


def _freshVenv(where: Path) -> Path:
    """
    Make a venv without pip whose interpreter also sees the test
    environment's site-packages (appended, so the venv's own come first);
    return its python.
    """
    _check(
        _run([sys.executable, "-m", "venv", "--without-pip", where], cwd=where.parent)
    )
    python = where / "bin" / "python"
    sitePackages = Path(
        _check(
            _run(
                [
                    python,
                    "-c",
                    "import sysconfig; print(sysconfig.get_path('purelib'))",
                ],
                cwd=where,
            )
        ).strip()
    )
    ours = dict.fromkeys(sysconfig.get_path(key) for key in ("purelib", "platlib"))
    (sitePackages / "_taskservice_test_deps.pth").write_text(
        "".join(f"{path}\n" for path in ours)
    )
    return python


@dataclass(frozen=True)
class Installed:
    kind: str
    python: Path
    source: Path
    cwd: Path
    seconds: float


def _buildOutputs() -> set[str]:
    return {
        path.name
        for pattern in ("build", "dist", "*.egg-info")
        for path in REPO.glob(pattern)
    }


@pytest.fixture(scope="module")
def setuptoolsCanBuild() -> None:
    """
    The offline build needs a setuptools that builds wheels by itself.
    """
    try:
        have = version("setuptools")
    except PackageNotFoundError:
        pytest.fail("setuptools is not installed: install the 'test' extra")
    numbers = tuple(int(part) for part in have.split(".")[:2] if part.isdigit())
    if numbers < SETUPTOOLS_MIN:
        try:
            version("wheel")
        except PackageNotFoundError:
            pytest.fail(
                f"setuptools {have} cannot build wheels without the 'wheel' package:"
                " install the 'test' extra (setuptools >= 70.1)"
            )


@pytest.fixture(scope="module", params=["regular", "editable"])
def installed(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    setuptoolsCanBuild: None,
) -> Iterator[Installed]:
    """
    The project installed by pip, non-editable or editable, in a fresh venv;
    with a working directory outside both the venv and the source.
    """
    kind = request.param
    base = tmp_path_factory.mktemp(f"install-{kind}")
    before = _buildOutputs()
    started = time.monotonic()
    source = _copySource(base / "source")
    python = _freshVenv(base / "venv")
    editable = ["-e"] if kind == "editable" else []
    _check(
        _run(
            [
                python,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-index",
                "--no-deps",
                "--no-build-isolation",
                "--no-cache-dir",
                *editable,
                source,
            ],
            cwd=base,
        )
    )
    elapsed = time.monotonic() - started
    cwd = base / "elsewhere"
    cwd.mkdir()
    yield Installed(kind, python, source, cwd, elapsed)
    assert _buildOutputs() == before, "installing left build products in the repo"


def test_installIsQuick(installed: Installed) -> None:
    """
    Making the venv and installing takes seconds, not a download's worth
    of minutes (the measure is printed for the record).
    """
    print(f"{installed.kind} install: {installed.seconds:.2f}s")
    assert installed.seconds < 60


def test_twistdHelpListsTaskservice(installed: Installed) -> None:
    """
    twistd, run by the fresh venv's interpreter from a directory that is
    not the source tree, lists the taskservice subcommand.
    """
    output = _check(_run([installed.python, TWISTD, "--help"], cwd=installed.cwd))
    commands = [line.split() for line in output.splitlines()]
    assert ["taskservice"] in [words[:1] for words in commands if words], output


def test_benchmarkShipsWithThePackage(installed: Installed) -> None:
    """
    C{python -m taskservice.bench} works from an installation: its modules,
    the C load client's source and the web files (the dashboard's, in
    their own directory, too) are installed.
    """
    script = (
        "import importlib.resources as r, taskservice.bench.__main__ as m;"
        " print(r.files('taskservice.bench').joinpath('loadclient.c').is_file(),"
        " r.files('taskservice').joinpath('web/index.html').is_file(),"
        " r.files('taskservice').joinpath('web/dashboard/dashboard.js').is_file())"
    )
    output = _check(_run([installed.python, "-c", script], cwd=installed.cwd))
    assert output.split() == ["True", "True", "True"], output


def test_getPluginsFindsTheInstalledPlugin(installed: Installed) -> None:
    """
    getPlugins(IServiceMaker) in the fresh venv finds the taskservice
    plugin, and both the plugin and the package come from the installation
    (the venv for a regular install, the installed copy for an editable
    one), never from the repository.
    """
    output = _check(_run([installed.python, "-c", _FIND_PLUGIN], cwd=installed.cwd))
    found = json.loads(output)
    assert found["found"] == ["taskservice.tap"]
    if installed.kind == "editable":
        home = installed.source
    else:
        home = installed.python.parent.parent
    for name in ("taskservice", "plugin"):
        path = Path(found[name]).resolve()
        assert path.is_relative_to(home.resolve()), (name, path, home)
        assert not path.is_relative_to(REPO), (name, path)


def test_controlVenvWithoutTheProjectDoesNotListIt(
    tmp_path: Path,
) -> None:
    """
    Control: a fresh venv set up the same way but with nothing installed
    does not list taskservice, so the tests above prove the install and
    not a leak of the test environment or the source tree.
    """
    python = _freshVenv(tmp_path / "venv")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    output = _check(_run([python, TWISTD, "--help"], cwd=cwd))
    assert "taskservice" not in output
    result = _run([python, "-c", "import taskservice"], cwd=cwd)
    assert result.returncode != 0
    assert "No module named 'taskservice'" in result.stderr
