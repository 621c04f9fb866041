"""Finishing work that must not be cut in half by a second Ctrl-C or a SIGTERM.

``with deferred_signals():`` holds SIGINT and SIGTERM back while the block runs (in
the main thread; elsewhere Python delivers no signals anyway) and delivers the last
one held, through the handler that was installed before, once the block is done.
A writer closing its file and a command printing how to resume use it, so a user
who presses Ctrl-C twice still gets a complete file and the line that says what to do.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

DEFERRED = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def deferred_signals(deliver: bool = True) -> Iterator[list[int]]:
    """Hold SIGINT/SIGTERM during the block; yields the list of signals held so far.

    ``deliver=False`` drops them instead (for a block that already handles an interrupt
    and ends by re-raising it).
    """
    held: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield held
        return
    previous = {s: signal.getsignal(s) for s in DEFERRED}
    for s in DEFERRED:
        signal.signal(s, lambda signum, frame: held.append(signum))
    try:
        yield held
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)   # None: set outside Python
        if held and deliver:
            signal.raise_signal(held[-1])   # runs the restored handler (KeyboardInterrupt, Terminated, exit)
