"""twistd plugin: ``twistd taskservice``. Kept import-light; see taskservice.tap."""

from twisted.application.service import ServiceMaker

taskservice = ServiceMaker(
    "taskservice",
    "taskservice.tap",
    "Run heavy tasks in a pool of worker processes, called over JSON-RPC lines.",
    "taskservice",
)
