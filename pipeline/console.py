"""What a person sees while a job runs: bars on a terminal, plain timed log lines in a pipe or a file."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("pipeline")

LOG_EVERY = 5.0  # seconds between progress lines when stderr is not a terminal
_PREFIXES = ("", "Ki", "Mi", "Gi", "Ti", "Pi")


def human_bytes(n: float) -> str:
    """A byte count as a person reads it: 1.5 GiB, not 1610612736."""
    for prefix in _PREFIXES:
        if abs(n) < 1024 or prefix == _PREFIXES[-1]:
            return f"{n:.0f} B" if not prefix else f"{n:.1f} {prefix}B"
        n /= 1024
    raise AssertionError("unreachable")


def is_terminal() -> bool:
    """Whether stderr is a terminal, where bars redraw in place; elsewhere they would fill a log with \\r."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _Stderr(logging.StreamHandler):
    """A handler that writes to whatever sys.stderr is now (a test's capture, or /dev/null after Ctrl-C)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        if not is_terminal():
            super().emit(record)
            return
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)  # above the bars, which are then redrawn
        except Exception:
            self.handleError(record)


@contextmanager
def logging_to_stderr(level: int) -> Iterator[None]:
    """The project's log lines on stderr, one per event; they carry counts and URLs, never header values."""
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    before = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(before[0])
        log.propagate = before[1]


def _widget_bar() -> Any | None:
    """tqdm's widget bar when running in a Jupyter kernel that has ipywidgets, else None."""
    shell = _kernel()
    if shell is None:
        return None
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return None
    from tqdm.notebook import tqdm

    return tqdm


def _kernel() -> Any | None:
    """The IPython shell when this process is a Jupyter kernel, else None."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython else None
    return shell if getattr(shell, "kernel", None) is not None else None


def _logging_here() -> bool:
    """Whether the project's log lines go to stderr now (the CLI), so progress can be one of them."""
    return any(isinstance(handler, _Stderr) for handler in log.handlers)


class _BytesAfterObjects:
    """Bytes shown after the objects bar, on its line, where a second line would need cursor escapes."""

    def __init__(self, bar, total: int) -> None:
        self.bar, self.total, self.n = bar, total, 0

    def update(self, n: int) -> None:
        self.n += n
        self.bar.set_postfix_str(f"{human_bytes(self.n)} of {human_bytes(self.total)}", refresh=False)

    def close(self) -> None:
        """The objects bar closes itself."""


class Meter:
    """Objects and bytes done of a total, shown where the person is: widgets in a Jupyter notebook, tqdm
    bars on a terminal, a log line every few seconds when the CLI logs to a pipe or a file, and else (a
    kernel without ipywidgets, a script's pipe) one text line that redraws with no cursor escapes."""

    def __init__(self, desc: str, objects: int, nbytes: int | None = None, every: float = LOG_EVERY) -> None:
        self.desc, self.total, self.total_bytes, self.every = desc, objects, nbytes, every
        self.done = self.done_bytes = 0
        self.started = self.logged = time.monotonic()
        self.lock = threading.Lock()
        self.bars = self._bars()

    def _bars(self) -> tuple:
        """No bars (log lines instead) only when the CLI logs to a pipe or a file."""
        widget = _widget_bar()
        if widget is None and not is_terminal():
            return () if _logging_here() else self._one_line()
        from tqdm.std import tqdm

        bar = widget or tqdm
        bars = [bar(total=self.total, unit="obj", desc=f"{self.desc} objects", position=0, leave=True)]
        if self.total_bytes is not None:
            bars.append(bar(total=self.total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                            desc=f"{self.desc} bytes  ", position=1, leave=True))
        return tuple(bars)

    def _one_line(self) -> tuple:
        from tqdm.std import tqdm

        bar = tqdm(total=self.total, unit="obj", desc=f"{self.desc} objects", mininterval=1.0)
        return (bar,) if self.total_bytes is None else (bar, _BytesAfterObjects(bar, self.total_bytes))

    def update(self, objects: int, nbytes: int = 0) -> None:
        with self.lock:
            self.done += objects
            self.done_bytes += nbytes
            if self.bars:
                self.bars[0].update(objects)
                if len(self.bars) > 1:
                    self.bars[1].update(nbytes)
            elif time.monotonic() - self.logged >= self.every and self.done < self.total:  # close() says 100%
                self.logged = time.monotonic()
                log.info("%s", self.line())

    def line(self) -> str:
        """Where this stage stands, in one line."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        text = f"{self.desc}: {self.done}/{self.total} objects{share}"
        if self.total_bytes is not None:
            text += f", {human_bytes(self.done_bytes)} of {human_bytes(self.total_bytes)}"
            text += f", {human_bytes(self.done_bytes / elapsed)}/s"
        return text + f", {self.done / elapsed:.1f} objects/s"

    def close(self) -> None:
        for bar in self.bars:
            bar.close()
        if not self.bars:
            log.info("%s (done in %.1f s)", self.line(), time.monotonic() - self.started)


class UnitMeter(Meter):
    """A run's meter: finished units plus what running units last reported, each unit counted once."""

    def __init__(self, objects: int, nbytes: int) -> None:
        super().__init__("de-identify", objects, nbytes)
        self.finished: set[str] = set()
        self.shown: dict[str, tuple[int, int]] = {}  # unit -> (objects, bytes) counted so far

    def _show(self, unit_id: str, objects: int, nbytes: int) -> None:
        before = self.shown.get(unit_id, (0, 0))
        self.shown[unit_id] = (objects, nbytes)
        self.update(objects - before[0], nbytes - before[1])

    def partial(self, report: dict) -> None:
        if report["unit_id"] not in self.finished:
            self._show(report["unit_id"], report["objects"], report["source_bytes"])

    def __call__(self, stats: dict) -> None:
        self.finished.add(stats["unit_id"])
        self._show(stats["unit_id"], stats["objects"], stats["source_bytes"])


@contextmanager
def stage(doing: str) -> Iterator[None]:
    """Say what is starting now, so no stage is a blank screen, and how long it took."""
    started = time.monotonic()
    log.info("%s...", doing)
    yield
    log.debug("%s took %.1f s", doing, time.monotonic() - started)


def dask_setup(worker) -> None:
    """Dask preload hook for a local cluster's worker processes: a Ctrl-C at the terminal reaches them too,
    but only the driver should handle it (by closing them). A worker only falls silent, so that neither a
    traceback nor the heartbeat errors of a scheduler closing before it reach the terminal."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda signum, frame: logging.disable(logging.CRITICAL))


def quiet_interrupts(message: str) -> Callable[[], None]:
    """Make the first Ctrl-C silence shutdown noise (clusters closing, threads cancelled) and raise
    KeyboardInterrupt; a second one leaves at once. The returned function prints `message` to the
    real stderr, once cleanup (and any bar's last redraw) is done."""
    terminal = sys.stderr

    def say() -> None:
        print(message, file=terminal, flush=True)

    def interrupted(signum, frame) -> None:
        if getattr(interrupted, "seen", False):
            say()
            os._exit(130)
        interrupted.seen = True  # type: ignore[attr-defined]
        logging.disable(logging.CRITICAL)
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - lives until the process ends
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, interrupted)
    return say
