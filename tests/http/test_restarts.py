"""The shared-inference supervisor's restart policy: back off, then give up on a process that keeps crashing."""

from __future__ import annotations

from service.http.restarts import MAX_DELAY_S, RestartPolicy


def test_each_replacement_waits_twice_as_long_and_one_crash_too_many_gives_up() -> None:
    policy = RestartPolicy(limit=5, window_s=60.0)
    delays = [policy.delay_after_crash(float(second)) for second in range(6)]
    assert delays == [0.25, 0.5, 1.0, 2.0, 4.0, None]


def test_crashes_older_than_the_window_are_forgotten() -> None:
    policy = RestartPolicy(limit=2, window_s=60.0)
    assert policy.delay_after_crash(0.0) == 0.25
    assert policy.delay_after_crash(30.0) == 0.5
    assert policy.delay_after_crash(61.0) == 0.5  # the crash at 0 s has left the window
    assert policy.delay_after_crash(70.0) is None  # three within 60 s


def test_the_wait_is_capped() -> None:
    policy = RestartPolicy(limit=100, window_s=1e9)
    delays = [policy.delay_after_crash(float(second)) for second in range(12)]
    assert max(d for d in delays if d is not None) == MAX_DELAY_S
    assert delays[-1] == MAX_DELAY_S


def test_a_limit_of_zero_never_replaces() -> None:
    assert RestartPolicy(limit=0, window_s=60.0).delay_after_crash(0.0) is None
