"""Faults of a put or get in flight, the Handle that reports them, and warnings logged once.

A put or get never raises for an I/O fault: it stores or loads less, and
records the fault on the thread running it (the caller's, the put thread or
the get thread); `Handle.errors` shows them to whoever wants to look. Any
thread may record a fault or warn.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, wait
from typing import Any, Callable, Optional

log = logging.getLogger("pykvstore")


class Handle:
    """A put or get in flight: `wait()` returns what the call would have returned.

    A put or get never raises for an I/O fault (it stores or loads less, and
    the serving path goes on); `errors` lists what it met, each exception
    naming the operation and the file, and `wait(check=True)` raises the first.
    """

    def __init__(self, future: Future) -> None:
        self._future = future

    def done(self) -> bool:
        return self._future.done()

    def wait_done(self, timeout: float) -> bool:
        """Blocks up to `timeout` seconds for the call to end; True when it has."""
        return not wait([self._future], timeout=timeout).not_done

    def wait(self, timeout: Optional[float] = None, check: bool = False) -> int:
        value, errors = self._future.result(timeout)
        if check and errors:
            raise errors[0]
        return value

    @property
    def errors(self) -> list[Exception]:
        """The faults the call met (empty until it is done)."""
        return list(self._future.result()[1]) if self._future.done() else []


def detached(err: Exception) -> Exception:
    """The same error without its traceback: the frames it holds would keep
    the call's buffers (host pool memory) alive for as long as the error is kept."""
    if isinstance(err, OSError) and err.errno is not None:
        return OSError(err.errno, err.strerror, err.filename)  # OSError picks the subclass from errno
    try:
        return type(err)(str(err))
    except TypeError:
        return RuntimeError(f"{type(err).__name__}: {err}")


class Faults:
    """The faults each thread's current put/get met, and this store's once-only warnings."""

    def __init__(self) -> None:
        self._calls = threading.local()
        self._warned: set[str] = set()

    def begin(self) -> None:
        """A put or get starts on this thread: nothing met yet."""
        self._calls.errors = []

    def add(self, err: Exception) -> None:
        """Records a fault the current put/get met (its Handle reports them)."""
        errors = getattr(self._calls, "errors", None)
        if errors is not None:
            errors.append(detached(err))

    def run(self, fn: Callable[..., int], *args: Any, **kwargs: Any) -> tuple[int, list[Exception]]:
        """Runs a put/get (on the put or get thread): its value and the faults it met, for a Handle."""
        value = fn(*args, **kwargs)
        return value, list(getattr(self._calls, "errors", []))

    def warn_once(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("%s", message)
