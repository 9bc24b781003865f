"""Polling for a condition another thread or process brings about, shared by the test
directories that have no fixture of their own for it."""

from __future__ import annotations

import time
from typing import Callable


def wait_until(predicate: Callable[[], object], timeout_s: float = 5.0,
               interval_s: float = 0.02) -> bool:
    """True as soon as `predicate()` is true; after `timeout_s`, its last answer."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())
