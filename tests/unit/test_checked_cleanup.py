"""The tests' own leftover check (tests/netlab.py): it fails a test that passed, and never
replaces the failure of a test that failed (the leftovers become a note on that failure)."""

from __future__ import annotations

import pytest

from netlab import checked_cleanup


def test_leftovers_fail_a_test_that_passed() -> None:
    ran = []

    def cleanup() -> list[str]:
        ran.append("cleanup")
        return ["netns pvtest-1 left behind", "pid 42 left behind"]

    with pytest.raises(AssertionError) as err, checked_cleanup(cleanup):
        ran.append("body")
    assert ran == ["body", "cleanup"]
    assert str(err.value) == "netns pvtest-1 left behind; pid 42 left behind"


def test_a_failing_test_keeps_its_own_failure() -> None:
    leftovers = ["netns pvtest-1 left behind"]
    with (
        pytest.raises(ValueError, match="the test's own failure") as err,
        checked_cleanup(lambda: leftovers),
    ):
        raise ValueError("the test's own failure")
    assert err.value.__notes__ == ["and after it: netns pvtest-1 left behind"]


def test_a_cleanup_that_breaks_does_not_hide_the_failure_either() -> None:
    def cleanup() -> list[str]:
        raise OSError("ip netns del: busy")

    with pytest.raises(KeyError) as err, checked_cleanup(cleanup):
        raise KeyError("vm")
    assert err.value.__notes__ == ["and the cleanup failed too: OSError('ip netns del: busy')"]


def test_nothing_left_is_silent() -> None:
    with checked_cleanup(list):
        pass
