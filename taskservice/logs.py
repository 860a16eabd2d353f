"""
Structured logs: one JSON object per line, for twistd's C{--logger}::

    twistd -n --logger=taskservice.logs.jsonLogger taskservice

Each line is Twisted's own JSON form of a log event (see
L{twisted.logger.eventAsJSON}: every field of the event, C{log_time},
C{log_namespace}, C{log_level}, C{log_format}...; L{eventsFromJSONLogFile}
reads it back), plus two plain fields for people and log shippers: C{text},
the formatted message (with the traceback of a failure), and C{level}, the
level's name. taskservice's own events carry their fields (C{workerID},
C{pid}, C{task}, C{cid}...), so they can be filtered on.

Lines go to standard output, or are appended to the file named by the
C{TASKSERVICE_LOG_FILE} environment variable (C{-} is standard output).
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    LogEvent,
    eventAsJSON,
    eventAsText,
)

LOG_FILE_ENVIRONMENT = "TASKSERVICE_LOG_FILE"

__all__ = ["LOG_FILE_ENVIRONMENT", "jsonLine", "jsonLogObserver", "jsonLogger"]


def jsonLine(event: LogEvent) -> str:
    """
    One event as one line of JSON (ending in a newline).
    """
    event = dict(event)
    level = event.get("log_level")
    extra = {
        "text": eventAsText(
            event, includeTimestamp=False, includeSystem=False, includeTraceback=True
        ),
        "level": getattr(level, "name", None),
    }
    for key, value in extra.items():
        # An event's own field of the same name wins.
        event.setdefault(key, value)
    return eventAsJSON(event) + "\n"


def jsonLogObserver(outFile: IO[Any]) -> FileLogObserver:
    """
    A log observer writing each event to C{outFile} as L{jsonLine}.
    """
    return FileLogObserver(outFile, jsonLine)


def jsonLogger() -> FileLogObserver:
    """
    twistd's C{--logger} factory: JSON lines to standard output, or
    appended to the file named by C{TASKSERVICE_LOG_FILE}.
    """
    path = os.environ.get(LOG_FILE_ENVIRONMENT, "-")
    if path in ("", "-"):
        return jsonLogObserver(sys.stdout)
    return jsonLogObserver(open(path, "a", encoding="utf-8"))
