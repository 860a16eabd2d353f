"""
taskservice: run heavy work in a pool of worker processes, called over
JSON-RPC lines (and, through the gateway, websockets).

This package's top level stays import-light: worker processes import it.
"""

from taskservice._task import JobContext, Registry, TaskSpec, currentJob, progress, task
from taskservice._version import __version__

__all__ = [
    "JobContext",
    "Registry",
    "TaskSpec",
    "__version__",
    "currentJob",
    "progress",
    "task",
]
