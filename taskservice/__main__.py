"""C{python -m taskservice}: the C{taskservice} command (L{taskservice.cli})."""

from taskservice.cli import run

run()
