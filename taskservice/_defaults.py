"""
Every default of the service, defined once: the pool's, the worker's, the
task server's, the job service's and C{twistd taskservice}'s endpoints.

No Twisted and no other taskservice module: C{twistd taskservice --help}
shows these without loading the pool, the server, the worker or the jobs,
and each of those modules takes its defaults from here. (The protocol's
limits, which clients share, are in L{taskservice.wire}.)
"""

from __future__ import annotations

# -- the pool ------------------------------------------------------------------

EXAMPLE_TASKS = ("taskservice.examples",)
"""The task modules served when none is given."""
DEFAULT_TIMEOUT = 300.0
"""A call's deadline in seconds when neither it nor its task gives one."""
DEFAULT_MAX_TIMEOUT = 3600.0
"""The longest deadline a caller may ask for."""
DEFAULT_MAX_QUEUE = 10_000
"""Calls that may wait for a worker; past it, -32003."""
DEFAULT_CONCURRENCY = 100
"""Coroutine calls one worker runs at once."""
DEFAULT_PIPELINE = 8
"""Calls sent ahead to a busy worker."""
DEFAULT_SHUTDOWN_TIMEOUT = 30.0
"""Seconds running calls get to finish at stop."""
DEFAULT_START_TIMEOUT = 60.0
"""Seconds a new worker has to say it is ready."""

# -- the worker ----------------------------------------------------------------

DEFAULT_MAX_RESULT = 64 * 1024 * 1024
"""The largest encoded result a worker sends, in bytes."""

# -- the task server -----------------------------------------------------------

DEFAULT_MAX_IN_FLIGHT = 1000
"""Calls one task-protocol connection may have running or queued."""

# -- durable jobs --------------------------------------------------------------

DEFAULT_TTL = 86400.0
"""Seconds a finished job (and its result) is kept: one day."""
DEFAULT_MAX_RUNNING = 100
"""Jobs handed to the pool at once."""
DEFAULT_SERVER_TIMEOUT = 10.0
"""Seconds without a heartbeat after which the servers sharing a PostgreSQL
journal take one's running jobs."""

# -- twistd taskservice --------------------------------------------------------

DEFAULT_LISTEN = "tcp:12345:interface=127.0.0.1"
DEFAULT_WEBSOCKET = "tcp:8080:interface=127.0.0.1"
DEFAULT_SMTP_SINK = "tcp:2525:interface=127.0.0.1"
DEFAULT_JOBS_DB = "taskservice-jobs.sqlite3"
MEMORY = ":memory:"
"""The --jobs-db that keeps jobs in memory (lost on stop)."""
DEFAULT_BACKLOG = 4096
"""The accept queue of the --listen socket when its description gives none
(Twisted's own default is 50): what Workerman uses, enough for the FAQ's
caller, which opens a connection per call. The kernel caps it at
C{net.core.somaxconn}."""
