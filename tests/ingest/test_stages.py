"""The pipeline's stage runners (`ingest.stages`): every item once, errors with their item,
bounded backlogs, early exits that stop the threads; and torch's per-thread thread count."""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from ingest.stages import ParseAhead, Prefetch, resolved
from ingest.threads import run_in_thread, torch_threads, use_threads


def _settle() -> None:
    time.sleep(0.3)  # long enough for a worker that is allowed to go on to do so


def test_resolved_holds_the_result_or_the_exception() -> None:
    assert resolved(lambda: 3).result() == 3
    with pytest.raises(ZeroDivisionError):
        resolved(lambda: 1 / 0).result()


def test_parse_ahead_yields_every_item_once_with_its_outcome() -> None:
    def step(n: int) -> int:
        if n == 3:
            raise ValueError("bad file")
        return n * 10

    with ParseAhead(range(8), step, workers=2, weight=lambda r: 1, max_weight=3, max_items=2) as p:
        pairs = list(p)
    got = dict(pairs)
    assert sorted(item for item, _ in pairs) == list(range(8))
    assert all(got[n].result() == n * 10 for n in got if n != 3)
    with pytest.raises(ValueError, match="bad file"):
        got[3].result()


def test_parse_ahead_passes_any_item_even_none() -> None:
    with ParseAhead([None, 0, ""], str, workers=1, weight=len, max_weight=9, max_items=9) as p:
        assert [(item, f.result()) for item, f in p] == [(None, "None"), (0, "0"), ("", "")]


def _recording_step() -> tuple[list[int], Callable[[int], int]]:
    """A step that notes every item it is started on, in order."""
    started: list[int] = []

    def step(n: int) -> int:
        started.append(n)
        return n

    return started, step


def test_parse_ahead_pauses_while_the_backlog_weighs_too_much() -> None:
    started, step = _recording_step()
    ahead = ParseAhead(range(20), step, workers=1, weight=lambda r: 4, max_weight=10, max_items=99)
    with ahead:
        _settle()
        assert started == [0, 1, 2]  # 12 >= 10 waiting: the worker waits
        results = iter(ahead)
        next(results)
        _settle()
        assert started == [0, 1, 2, 3]  # one taken (8 left), one more parsed
        assert [item for item, _ in results] == list(range(1, 20))


def test_parse_ahead_counts_files_and_always_delivers_a_heavy_one() -> None:
    started, step = _recording_step()
    ahead = ParseAhead(range(6), step, workers=1, weight=lambda r: 1000, max_weight=10, max_items=5)
    with ahead:
        _settle()
        assert started == [0]
        assert [item for item, _ in ahead] == list(range(6))
    ahead = ParseAhead(range(9), step, workers=1, weight=lambda r: 0, max_weight=10, max_items=2)
    started.clear()
    with ahead:
        _settle()
        assert started == [0, 1]


def test_leaving_parse_ahead_early_stops_its_workers() -> None:
    started: list[int] = []
    ahead = ParseAhead(
        range(1000), started.append, workers=2, weight=lambda r: 1, max_weight=4, max_items=4
    )
    with ahead:
        next(iter(ahead))
    assert len(started) < 10
    assert not [t for t in threading.enumerate() if t.name.startswith("parse-")]


def test_prefetch_keeps_order_and_runs_only_a_bounded_number_ahead() -> None:
    calls: list[int] = []

    def step(n: int) -> int:
        calls.append(n)
        return -n

    with Prefetch(range(10), step, ahead=2) as prefetch:
        _settle()
        assert calls == [0, 1]
        assert [f.result() for f in prefetch] == [-n for n in range(10)]


def test_prefetch_step_errors_stay_with_their_element_and_source_errors_surface() -> None:
    def step(n: int) -> float:
        return 1 / n

    with Prefetch([1, 0, 2], step) as prefetch:
        futures = list(prefetch)
    assert futures[0].result() == 1 and futures[2].result() == 0.5
    with pytest.raises(ZeroDivisionError):
        futures[1].result()

    def broken_source() -> Iterator[int]:
        yield 1
        raise OSError("share unmounted")

    with Prefetch(broken_source(), step) as prefetch, pytest.raises(OSError, match="unmounted"):
        list(prefetch)


def test_leaving_prefetch_early_stops_its_thread() -> None:
    calls: list[int] = []
    with Prefetch(range(1000), calls.append, ahead=1, name="prefetch-test") as prefetch:
        next(iter(prefetch))
    assert len(calls) <= 3
    assert not [t for t in threading.enumerate() if t.name == "prefetch-test"]


def test_use_threads_holds_in_the_thread_that_computes() -> None:
    """torch's thread count is per OS thread: a thread that calls `use_threads(1)` computes on
    one core (process CPU time equals the thread's own), whatever the main thread set."""
    torch = pytest.importorskip("torch")
    a = torch.randn(1500, 1500)
    ratio: list[float] = []

    def work() -> None:
        use_threads(1)
        before, own = resource.getrusage(resource.RUSAGE_SELF), time.thread_time()
        for _ in range(8):
            a @ a
        after = resource.getrusage(resource.RUSAGE_SELF)
        used = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        ratio.append(used / (time.thread_time() - own))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert ratio[0] < 1.3


def test_torch_threads_puts_the_callers_count_back() -> None:
    """A query embedded on one thread must not leave the request's thread on one core."""
    torch = pytest.importorskip("torch")
    counts: list[int] = []

    def work() -> None:
        use_threads(2)
        with torch_threads(1):
            counts.append(torch.get_num_threads())
        counts.append(torch.get_num_threads())
        with pytest.raises(ZeroDivisionError), torch_threads(1):
            1 / 0  # noqa: B018
        counts.append(torch.get_num_threads())

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert counts == [1, 2, 2]


def _os_threads() -> set[str]:
    return set(os.listdir("/proc/self/task"))


def _new_os_threads(before: set[str]) -> set[str]:
    """Threads started since ``before`` that are still alive, once they have had time to end
    (other tests' threads may end meanwhile: only new ones count)."""
    deadline = time.monotonic() + 5
    while _os_threads() - before and time.monotonic() < deadline:
        time.sleep(0.02)
    return _os_threads() - before


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
def test_run_in_thread_leaves_no_openmp_team_behind() -> None:
    """A parallel torch operation leaves its thread an OpenMP team (an extra OS thread) for as
    long as that thread lives; `run_in_thread`'s thread and team end with the call."""
    torch = pytest.importorskip("torch")

    def convert() -> str:
        return str(torch.ones(1 << 22).to(torch.bfloat16).dtype)

    before = _os_threads()
    assert run_in_thread(convert, threads=2, name="convert") == "torch.bfloat16"
    assert _new_os_threads(before) == set()

    release, converted = threading.Event(), threading.Event()

    def long_lived() -> None:  # the control: the same work in a thread that stays
        use_threads(2)
        convert()
        converted.set()
        release.wait()

    thread = threading.Thread(target=long_lived)
    thread.start()
    converted.wait()
    assert len(_os_threads() - before) >= 2  # the thread and its team's worker
    release.set()
    thread.join()


def test_run_in_thread_raises_the_functions_error_in_the_caller() -> None:
    def fail() -> None:
        raise ValueError("bad model file")

    with pytest.raises(ValueError, match="bad model file"):
        run_in_thread(fail, threads=None, name="fail")
