"""governance/draining.py: the SIGTERM/SIGINT hook chained in front of the server's handler,
and the draining state long polls race against."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import pytest

from governance import draining


@pytest.fixture(autouse=True)
def _restore():
    saved = {signum: signal.getsignal(signum) for signum in draining.DRAIN_SIGNALS}
    draining.reset()
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)
    draining._previous.clear()
    draining.reset()


def test_the_hook_marks_draining_and_hands_the_signal_to_the_server():
    received = []
    signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    assert draining.install_signal_hook()
    assert draining.install_signal_hook()  # twice: still one hook, the server's behind it
    assert not draining.is_draining()
    signal.raise_signal(signal.SIGTERM)
    assert draining.is_draining()
    assert received == [signal.SIGTERM]


def test_without_a_server_handler_nothing_is_installed():
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    assert not draining.install_signal_hook()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_not_from_another_thread():
    result = []
    thread = threading.Thread(target=lambda: result.append(draining.install_signal_hook()))
    thread.start()
    thread.join()
    assert result == [False]


def test_remaining_is_zero_while_draining():
    deadline = time.monotonic() + 120
    assert draining.remaining(deadline) > 0
    draining.start_draining()
    assert draining.remaining(deadline) == 0


def test_waiters_are_woken_on_their_own_loop_and_late_ones_at_once():
    async def main() -> list[str]:
        woken: list[str] = []
        event = asyncio.Event()
        draining.on_drain(lambda: (woken.append("early"), event.set()))
        threading.Thread(target=draining.start_draining).start()
        await asyncio.wait_for(event.wait(), 60)
        late = asyncio.Event()
        draining.on_drain(lambda: (woken.append("late"), late.set()))
        await asyncio.wait_for(late.wait(), 60)
        return woken

    assert asyncio.run(main()) == ["early", "late"]
