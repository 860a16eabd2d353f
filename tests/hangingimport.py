"""
A task module whose import hangs in worker processes that are given
C{TASKSERVICE_TEST_HANG_IMPORT} in their environment (the parent, which
imports it too to know its tasks, is not).
"""

from __future__ import annotations

import os
import time

from taskservice import task

if os.environ.get("TASKSERVICE_TEST_HANG_IMPORT"):
    time.sleep(60)


@task
def never() -> None:
    """
    Never runs: no worker gets past importing this module.
    """
