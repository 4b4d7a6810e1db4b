"""The device's jobs: one at a time, each stoppable, all of them stopped when the server stops.

A job runs in a worker thread that Gradio cannot interrupt. So every job is asked, between batches,
whether to stop (`Work.should_stop`): because its client has gone (a cancelled or disconnected
stream) or because the server is stopping (SIGTERM). A job that stops raises `cc.Cancelled` from
the engine and writes no answer; its visitor's place at the queue's door is given back only then.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import gradio as gr

import cocoa_clip as cc

STOPPING = "The server is stopping (it is being restarted or updated); please ask again in a minute."


class Work:
    """The device's turn-taking: `turn()` around each job, `stop()` when the server stops.

    >>> work = Work()
    >>> with work.turn():
    ...     pass
    >>> work.stop(timeout=1.0)
    True
    """

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._device = threading.Lock()  # one heavy job on the device at a time, a stopping one included
        self._jobs = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """Hold the device for one job: wait while the job before is still stopping; once the server stops,
        every job (waiting or running) ends with the STOPPING sentence."""
        with self._changed:
            self._jobs += 1
        try:
            with self._device:
                if self.stopping.is_set():
                    raise gr.Error(STOPPING, print_exception=False)
                try:
                    yield
                except gr.Error as error:
                    if self.stopping.is_set() and isinstance(error.__cause__, cc.Cancelled):
                        raise gr.Error(STOPPING, print_exception=False) from error
                    raise
        finally:
            with self._changed:
                self._jobs -= 1
                self._changed.notify_all()

    def should_stop(self, client_gone: Callable[[], bool] | None = None) -> Callable[[], bool]:
        """What the engine asks between batches: has the client gone, or is the server stopping?"""
        if client_gone is None:
            return self.stopping.is_set
        return lambda: client_gone() or self.stopping.is_set()

    def stop(self, timeout: float) -> bool:
        """Stop every job; True when none is left running within `timeout` seconds."""
        self.stopping.set()
        with self._changed:
            return self._changed.wait_for(lambda: self._jobs == 0, timeout)
