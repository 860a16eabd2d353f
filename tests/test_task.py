"""
The @task decorator and the registry built from modules.
"""

from __future__ import annotations

import sys
import types

import pytest

from taskservice import JobContext, Registry, TaskSpec, currentJob, progress, task
from taskservice._task import _jobContext, _progressHook, jobContextFrom, specOf


def test_bareDecorator() -> None:
    """
    @task registers under the function's name with no policy and returns
    the function unchanged.
    """

    def double(x: int) -> int:
        return 2 * x

    assert task(double) is double
    assert specOf(double) == TaskSpec(name="double", function=double)
    assert double(2) == 4


def test_policy() -> None:
    """
    @task(name=..., timeout=..., idempotent=...) records its policy.
    """

    @task(name="mail.send", timeout=30, idempotent=True)
    def send() -> None:
        pass

    spec = specOf(send)
    assert spec is not None
    assert (spec.name, spec.timeout, spec.idempotent) == ("mail.send", 30, True)


@pytest.mark.parametrize("name", ["$/stats", "1abc", "", "a b", "x" * 200, "a/b"])
def test_badNames(name: str) -> None:
    """
    Names that could clash with the reserved $/ namespace or are not plain
    identifiers are refused at registration.
    """
    with pytest.raises(ValueError, match="invalid task name"):
        task(name=name)(lambda: None)


@pytest.mark.parametrize("timeout", [0, -1])
def test_badTimeout(timeout: float) -> None:
    """
    A timeout must be positive.
    """
    with pytest.raises(ValueError, match="timeout must be positive"):
        task(timeout=timeout)


def test_checkArguments() -> None:
    """
    Arguments are checked against the signature without calling.
    """

    @task
    def f(a: int, b: int = 0) -> None:
        raise AssertionError("never called")

    spec = specOf(f)
    assert spec is not None
    spec.checkArguments([1], {})
    spec.checkArguments([], {"a": 1, "b": 2})
    with pytest.raises(TypeError):
        spec.checkArguments([], {})
    with pytest.raises(TypeError):
        spec.checkArguments([1, 2, 3], {})


def test_validate() -> None:
    """
    A task's C{validate} sees the arguments after the signature check (by
    position or by name, the fast path included); its L{ValueError} or
    L{TypeError} becomes a L{TypeError} with the same message (which the
    pool answers as invalid params); the function itself is not called.
    """
    seen: list[tuple[object, ...]] = []

    def positive(a: object, b: object = 1) -> None:
        seen.append((a, b))
        if not isinstance(a, int) or isinstance(a, bool) or a <= 0:
            raise ValueError("a must be a positive integer")
        if b is None:
            raise TypeError("b may not be null")

    @task(validate=positive)
    def f(a: int, b: int = 1) -> None:
        raise AssertionError("never called")

    spec = specOf(f)
    assert spec is not None
    spec.checkArguments([3], {})
    spec.checkArguments([], {"a": 3, "b": 2})
    with pytest.raises(TypeError, match=r"^a must be a positive integer$"):
        spec.checkArguments([True], {})
    with pytest.raises(TypeError, match=r"^b may not be null$"):
        spec.checkArguments([1, None], {})
    with pytest.raises(TypeError, match="missing a required argument"):
        spec.checkArguments([], {"b": 2})
    assert seen == [(3, 1), (3, 2), (True, 1), (1, None)]


@pytest.mark.parametrize(
    ("args", "kwargs", "fits"),
    [
        ([1], {}, True),
        ([1, 2], {}, True),
        ([], {}, False),
        ([1, 2, 3], {}, False),
        ([1], {"c": 3}, True),
        ([1], {"b": 2}, True),
        ([1, 2, 3], {"c": 3}, False),
        ([], {"c": 3}, False),
    ],
)
def test_checkArgumentsKeywordOnly(
    args: list[int], kwargs: dict[str, int], fits: bool
) -> None:
    """
    Functions with keyword-only parameters are checked in full (not by the
    positional fast path).
    """

    @task
    def g(a: int, b: int = 0, *, c: int = 0) -> None:
        raise AssertionError("never called")

    spec = specOf(g)
    assert spec is not None
    if fits:
        spec.checkArguments(args, kwargs)
    else:
        with pytest.raises(TypeError):
            spec.checkArguments(args, kwargs)


def _module(name: str, source: str) -> types.ModuleType:
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(source, module.__dict__)
    return module


def test_registryFromModules() -> None:
    """
    Only @task functions defined in the named modules are registered, not
    ones merely imported into them, nor plain functions.
    """
    try:
        _module(
            "_ts_a",
            "from taskservice import task\n"
            "@task\ndef one(): return 1\n"
            "def plain(): return 0\n",
        )
        _module(
            "_ts_b",
            "from taskservice import task\nfrom _ts_a import one\n"
            "@task(name='two')\ndef second(): return 2\n",
        )
        registry = Registry.fromModules(["_ts_b"])
        assert sorted(registry) == ["two"]
        registry = Registry.fromModules(["_ts_a", "_ts_b"])
        assert sorted(registry) == ["one", "two"]
        assert registry.modules == ("_ts_a", "_ts_b")
    finally:
        del sys.modules["_ts_a"], sys.modules["_ts_b"]


def test_duplicateNames() -> None:
    """
    Two different functions may not take the same name.
    """
    registry = Registry([TaskSpec("x", lambda: 1)])
    with pytest.raises(ValueError, match="two tasks"):
        registry.add(TaskSpec("x", lambda: 2))


def test_missingModule() -> None:
    """
    A module that cannot be imported fails loudly.
    """
    with pytest.raises(ImportError):
        Registry.fromModules(["no_such_module_here"])


def test_progressOutsideAWorker() -> None:
    """
    progress() is a no-op outside a worker, and reports done/total/extra to
    the worker's hook inside one.
    """
    progress(1, 2)
    seen: list[dict[str, object]] = []
    token = _progressHook.set(seen.append)
    try:
        progress(1, 2, stage="x")
        progress(5)
    finally:
        _progressHook.reset(token)
    assert seen == [{"stage": "x", "done": 1, "total": 2}, {"done": 5}]


def test_concurrentPolicy() -> None:
    """
    @task(concurrent=True) marks a function whose calls share a worker; one
    that is not a coroutine function needs a reactor in its worker.
    """

    @task(concurrent=True)
    def viaDeferred() -> None:
        pass

    @task
    async def coroutine() -> None:
        pass

    @task
    def plain() -> None:
        pass

    specs = [specOf(f) for f in (viaDeferred, coroutine, plain)]
    assert [(s.isAsync, s.needsReactor) for s in specs if s] == [
        (True, True),
        (True, False),
        (False, False),
    ]


def test_retryPolicy() -> None:
    """
    @task(retries=..., backoff=...) records a durable job's default retry
    policy (none by default); nonsense values are refused at decoration.
    """

    @task(retries=3, backoff=0.5)
    def flaky() -> None:
        pass

    @task
    def plain() -> None:
        pass

    spec, default = specOf(flaky), specOf(plain)
    assert spec is not None and default is not None
    assert (spec.retries, spec.backoff) == (3, 0.5)
    assert (default.retries, default.backoff) == (0, 1.0)
    for bad in ({"retries": -1}, {"retries": True}, {"retries": 1.5}):
        with pytest.raises(ValueError, match="retries"):
            task(**bad)
    with pytest.raises(ValueError, match="backoff"):
        task(backoff=-1)


def test_currentJobOutsideAWorker() -> None:
    """
    currentJob() is None outside a job, and a job frame's context reads as
    a JobContext (attempt 1 unless the frame says otherwise).
    """
    assert currentJob() is None
    assert jobContextFrom(None) is None
    assert jobContextFrom({"id": "a"}) == JobContext("a", 1, None)
    token = _jobContext.set(jobContextFrom({"id": "b", "attempt": 2}))
    try:
        assert currentJob() == JobContext("b", 2, None)
    finally:
        _jobContext.reset(token)
