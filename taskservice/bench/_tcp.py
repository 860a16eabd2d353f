"""
Issue 6, scenario 2: the TCP task protocol, trivial call (echo), driven by
the compiled epoll load client (L{taskservice.bench._loadclient}):

 - 2a: 100 persistent connections, one JSON-RPC call in flight on each;
 - 2b: a new connection per call, 100 at once, exactly as the Workerman
   FAQ's caller does (C{{"function":...,"args":...}}, read one line, close);
 - 2c: one connection, one call at a time.

Each runs against C{twistd taskservice} (a subprocess, started as a user
starts it) and against the in-run baseline, a plain-Python server built the
FAQ's way (L{taskservice.bench._faqserver}), interleaved over the runs.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from taskservice.bench import _faqserver, _pingpong, _twistedecho
from taskservice.bench._loadclient import (
    NO_COMPILER,
    Series,
    build,
    cpuRow,
    errorNotes,
    measure,
)
from taskservice.bench._stats import percentile
from taskservice.bench._websocket import HOST, startTwistd, stop, waitForPort
from taskservice.testing import freePort

WORKERS = 2
# One task process per core: each answers in-process, so more processes
# than cores only add context switches (the FAQ's "10x the CPUs" is for
# blocking tasks). On this 2-core machine that is also our worker count.
FAQ_PROCESSES = os.cpu_count() or WORKERS
CONNECTIONS = 100
TIMEOUT = 60


@dataclass(frozen=True)
class Sizes:
    """
    Calls per run of each sub-scenario.
    """

    persistent: int
    perConnection: int
    sequential: int


SIZES = {False: Sizes(60_000, 10_000, 5_000), True: Sizes(20_000, 4_000, 1_000)}

Rows = list[list[str]]


def _waitForListeners(port: int, count: int, seconds: float = 30) -> None:
    """
    Wait until C{count} sockets listen on C{port} (SO_REUSEPORT): a
    connection goes to one of those listening when it is made.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        listening = 0
        with open("/proc/net/tcp") as table:
            for line in table.readlines()[1:]:
                fields = line.split()
                if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
                    listening += 1
        if listening >= count:
            return
        time.sleep(0.05)
    raise RuntimeError(f"fewer than {count} listeners on port {port}")


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x"


async def tcpScenario(runs: int, quick: bool, rows: Rows, notes: list[str]) -> None:
    """
    2a, 2b and 2c against ours and the FAQ-style baseline, interleaved (the
    order alternates from run to run); rows and notes for the report.
    """
    binary = build()
    if binary is None:
        rows.append(["2 TCP task protocol (2a-2c)", NO_COMPILER, "-", "-"])
        return
    sizes = SIZES[quick]
    modes = {
        "2a": ("persistent", sizes.persistent, CONNECTIONS),
        "2b": ("faq", sizes.perConnection, CONNECTIONS),
        "2c": ("sequential", sizes.sequential, 1),
    }
    ours = {name: Series() for name in modes}
    shared = {name: Series() for name in modes}
    faq = {name: Series() for name in modes}
    inline = {name: Series() for name in modes}
    with tempfile.TemporaryDirectory() as directory:
        port, sharedPort = freePort(), freePort()
        # The baseline's backlog: Twisted's default of 50 overflows when
        # 100 callers connect at once (SYNs dropped, retried after 1 s).
        listen = f"tcp:{port}:interface={HOST}:backlog={_faqserver.BACKLOG}"
        # Each server in a directory of its own: a task server keeps its
        # job journal (--jobs-db) there, and a journal serves one server.
        places = [Path(directory) / name for name in ("one", "left", "right")]
        for place in places:
            place.mkdir()
        server = startTwistd(
            places[0], "--no-smtp-sink", "--no-websocket", "--listen", listen
        )
        # One parent per core: two task servers of one worker each on one
        # port (--reuse-port), as docs/deployment suggests.
        pair = [
            startTwistd(
                place,
                "--no-smtp-sink",
                "--no-websocket",
                "--reuse-port",
                "--listen",
                f"tcp:{sharedPort}:interface={HOST}:backlog={_faqserver.BACKLOG}",
                workers=1,
            )
            for place in places[1:]
        ]
        baseline = _faqserver.start(FAQ_PROCESSES)
        reference = _twistedecho.start()
        try:
            waitForPort(port, server)
            for process in pair:
                waitForPort(sharedPort, process)
            _waitForListeners(sharedPort, len(pair))
            targets = [
                (server.pid, port, ours),
                (pair[0].pid, sharedPort, shared),
                (baseline.pid, baseline.port, faq),
                (reference.pid, reference.port, inline),
            ]
            for pid, target, _ in targets:  # warm up (and learn echo is short)
                measure(binary, pid, "persistent", target, total=5_000, connections=10)
            for run in range(runs):
                for name, (mode, total, connections) in modes.items():
                    for pid, target, series in targets[:: 1 if run % 2 else -1]:
                        series[name].add(
                            measure(
                                binary,
                                pid,
                                mode,
                                target,
                                total=total,
                                connections=connections,
                                timeout=TIMEOUT,
                            )
                        )
        finally:
            reference.stop()
            baseline.stop()
            stop(server)
            for process in pair:
                stop(process)
    floor = _pingpong.pipeRoundTrips(sizes.sequential)
    _report(ours, shared, faq, inline, rows, notes)
    rows.append(
        [
            "2c floor: a round trip between two plain Python processes (pipes)",
            f"p50 {percentile(floor, 0.5) * 1e3:.3f} ms,"
            f" p99 {percentile(floor, 0.99) * 1e3:.3f} ms",
            "-",
            "-",
        ]
    )


def _report(
    ours: dict[str, Series],
    shared: dict[str, Series],
    faq: dict[str, Series],
    inline: dict[str, Series],
    rows: Rows,
    notes: list[str],
) -> None:
    base = f"FAQ-style plain Python, {FAQ_PROCESSES} processes:"
    sharing = "two task servers of 1 worker sharing the port (--reuse-port)"
    for what, name, contender, against, baseline in (
        (
            f"2a TCP, {CONNECTIONS} persistent connections, 1 call in flight each",
            "2a",
            ours,
            base,
            faq,
        ),
        (
            f"2b TCP, a connection per call (FAQ caller), {CONNECTIONS} at once",
            "2b",
            ours,
            base,
            faq,
        ),
        (f"2a, {sharing}", "2a", shared, base, faq),
        (f"2b, {sharing}", "2b", shared, base, faq),
        (
            "2a against one Twisted process answering inline (no worker hop)",
            "2a",
            ours,
            "inline Twisted, 1 process:",
            inline,
        ),
        (
            "2b against one Twisted process answering inline, a connection per call",
            "2b",
            ours,
            "inline Twisted, 1 process:",
            inline,
        ),
    ):
        o, f = contender[name], baseline[name]
        rows.append(
            [
                what,
                f"{o.rate.show('calls/s')}; {o.latency()}",
                f"{against} {f.rate.show('calls/s')}; {f.latency()}",
                ratio(o.rate.median, f.rate.median),
            ]
        )
    rows.append(
        [
            "2a against the FAQ's way of calling (the 2b baseline)",
            f"2a {ours['2a'].rate.show('calls/s')}",
            f"{base} connection per call {faq['2b'].rate.show('calls/s')}",
            ratio(ours["2a"].rate.median, faq["2b"].rate.median),
        ]
    )
    o, f = ours["2c"], faq["2c"]
    rows.append(
        [
            "2c TCP, one connection, sequential",
            o.latency(),
            f"{base} {f.latency()}",
            f"{f.p50 / o.p50:.2f}x (p50)",
        ]
    )
    rows.append(cpuRow("2", ours, faq))
    notes.append(
        f"2 (TCP): the C epoll load client ({CONNECTIONS} connections for 2a/2b);"
        " rates are medians of the runs (min-max), latencies the medians of the"
        f" runs' p50/p99. The baseline runs {FAQ_PROCESSES} forked processes"
        " sharing the listening socket, one per core: each answers in-process,"
        " so more (the FAQ suggests 10x the CPUs, for blocking tasks) only adds"
        " context switches (a trial here with 20: ~0.85x the persistent rate,"
        f" ~0.4x per connection); ours runs {WORKERS} workers behind one parent."
        f" Both listen with backlog {_faqserver.BACKLOG} (Workerman's default is"
        " larger still): with Twisted's default of 50, 2b overflows the accept"
        " queue and its p99 becomes ~1 s (SYN retransmits)."
        " CPU is CPU-seconds per second of the run (1.00 = one core; for ours,"
        " its parent process alone in parentheses, beside its workers); on"
        " loopback the client's system time includes kernel TCP work done for"
        " the server."
    )
    a, b, c = ours["2a"], faq["2b"], ours["2c"]
    notes.append(
        "2 targets (issue 6, 2 cores): 2a >= 50,000 calls/s:"
        f" {a.rate.median:,.0f} ({met(a.rate.median >= 50_000)}); 2a >= 4x the"
        f" FAQ-style 2b: {a.rate.median / b.rate.median:.2f}x"
        f" ({met(a.rate.median >= 4 * b.rate.median)}); 2c p50 <= 0.15 ms:"
        f" {c.p50 * 1e3:.3f} ms ({met(c.p50 <= 0.15e-3)}), p99 <= 0.30 ms:"
        f" {c.p99 * 1e3:.3f} ms ({met(c.p99 <= 0.30e-3)}). Reference (issue 6,"
        " same machine, not this run): Workerman's FAQ pattern 14,852 calls/s"
        " with a connection per call."
    )
    i2a, i2b, f2b, f2c = inline["2a"], inline["2b"], faq["2b"], faq["2c"]
    ours2b = ours["2b"].rate.median
    notes.append(
        "2 targets (issue 15, same run): 2a >= 0.9x one Twisted process inline:"
        f" {a.rate.median / i2a.rate.median:.2f}x"
        f" ({met(a.rate.median >= 0.9 * i2a.rate.median)}); 2b >= 1.0x one"
        f" Twisted process inline with a connection per call:"
        f" {ours2b / i2b.rate.median:.2f}x ({met(ours2b >= i2b.rate.median)}),"
        f" >= 0.8x the FAQ-style server: {ours2b / f2b.rate.median:.2f}x"
        f" ({met(ours2b >= 0.8 * f2b.rate.median)}); 2c p50 <= 1.4x the"
        f" FAQ-style p50: {c.p50 / f2c.p50:.2f}x ({met(c.p50 <= 1.4 * f2c.p50)})."
    )
    notes.extend(errorNotes("", ours, "FAQ-style", faq))


def met(condition: bool) -> str:
    return "met" if condition else "missed"
