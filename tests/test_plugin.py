"""
The C{twistd} plugin: C{twisted/plugins/taskservice_plugin.py} is found by
Twisted's plugin discovery, points at L{taskservice.tap}, and stays
import-light (importing it, as C{twistd --help} does for every plugin, must
not drag in the process pool or the server).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin, getPlugins

import taskservice.tap


def test_pluginModuleExposesServiceMaker() -> None:
    """
    The plugin module holds one ServiceMaker with tapname 'taskservice'
    whose module is taskservice.tap, and it provides both plugin interfaces.
    """
    from twisted.plugins import taskservice_plugin

    maker = taskservice_plugin.taskservice
    assert maker.tapname == "taskservice"
    assert maker.module == "taskservice.tap"
    assert maker.description
    assert IServiceMaker.providedBy(maker)
    assert IPlugin.providedBy(maker)


def test_serviceMakerLoadsTheTap() -> None:
    """
    The ServiceMaker's options and makeService are taskservice.tap's.
    """
    from twisted.plugins import taskservice_plugin

    maker = taskservice_plugin.taskservice
    assert maker.options is taskservice.tap.Options
    assert maker.makeService is taskservice.tap.makeService


def test_getPluginsFindsIt() -> None:
    """
    getPlugins(IServiceMaker), which twistd uses to list its subcommands,
    finds exactly one 'taskservice' plugin.
    """
    makers = [p for p in getPlugins(IServiceMaker) if p.tapname == "taskservice"]
    assert len(makers) == 1
    assert makers[0].module == "taskservice.tap"


def test_pluginImportIsLight(tmp_path: Path) -> None:
    """
    Importing the plugin module (in a fresh interpreter, so nothing is
    imported already) does not import the pool, the server, the tap or the
    reactor: twistd imports every plugin to print its help, and a slow or
    failing import here would hurt every twistd user on the machine. The
    working directory is not the repository, so the installed plugin is
    the one imported.
    """
    script = textwrap.dedent(
        """
        import sys
        import twisted.plugins.taskservice_plugin
        heavy = [
            name
            for name in (
                "taskservice.pool",
                "taskservice.server",
                "taskservice.tap",
                "twisted.internet.reactor",
            )
            if name in sys.modules
        ]
        print(repr(heavy))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
