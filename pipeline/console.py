"""What a person sees while a job runs: bars on a terminal, plain timed log lines in a pipe or a file."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("pipeline")

LOG_EVERY = 5.0  # seconds between progress lines when stderr is not a terminal
TICK = 0.2  # seconds between redraws of a live line on a terminal
LONG_STAGE = 1.0  # a stage that took at least this long says so when it ends
_PREFIXES = ("", "Ki", "Mi", "Gi", "Ti", "Pi")


def human_bytes(n: float) -> str:
    """A byte count as a person reads it: 1.5 GiB, not 1610612736."""
    for prefix in _PREFIXES:
        if abs(n) < 1024 or prefix == _PREFIXES[-1]:
            return f"{n:.0f} B" if not prefix else f"{n:.1f} {prefix}B"
        n /= 1024
    raise AssertionError("unreachable")


def human_seconds(seconds: float) -> str:
    """A duration as a person reads it: 45 s, 3 min 20 s, 2 h 5 min."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def is_terminal() -> bool:
    """Whether stderr is a terminal, where bars redraw in place; elsewhere they would fill a log with \\r."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _Stderr(logging.StreamHandler):
    """A handler that writes to whatever sys.stderr is now (a test's capture, or /dev/null after Ctrl-C);
    `progress` says whether live lines and periodic progress lines may go there too."""

    def __init__(self, progress: bool = True) -> None:
        super().__init__()
        self.progress = progress

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
def logging_to_stderr(level: int, progress: bool = True) -> Iterator[None]:
    """The project's log lines on stderr, one per event; they carry counts and URLs, never header values.
    With `progress`, what is under way shows too: live lines on a terminal, a line every few seconds
    elsewhere."""
    handler = _Stderr(progress)
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


def say(text: str) -> None:
    """A line for the person on stderr, above any live line or bar rather than through it."""
    if is_terminal():
        from tqdm import tqdm

        tqdm.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr)


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


def _progress_here() -> bool:
    """Whether the CLI logs to stderr and shows progress there (not with -q or --no-progress)."""
    return any(isinstance(handler, _Stderr) and handler.progress for handler in log.handlers)


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
    kernel without ipywidgets, a script's pipe) one text line that redraws with no cursor escapes. While
    it is open it is the live line: bars are redrawn and log lines written even when no update comes."""

    def __init__(self, desc: str, objects: int, nbytes: int | None = None, every: float = LOG_EVERY,
                 unit: str = "objects") -> None:
        self.desc, self.total, self.total_bytes, self.every, self.unit = desc, objects, nbytes, every, unit
        self.done = self.done_bytes = 0
        self.started = self.logged = time.monotonic()
        self.lock = threading.Lock()
        _live.opened(self)  # before the bars: a stage's live line leaves the screen to them
        widget = _widget_bar()
        self.bars = self._bars(widget)
        self.redraw = bool(self.bars) and (widget is not None or is_terminal())  # not a pipe's text line
        if not self.bars:
            log.info("%s: %d %s%s to do", desc, objects, unit,
                     f" ({human_bytes(nbytes)})" if nbytes is not None else "")

    def _bars(self, widget) -> tuple:
        """No bars (log lines instead) only when the CLI logs to a pipe or a file."""
        if widget is None and not is_terminal():
            return () if _logging_here() else self._one_line()
        from tqdm.std import tqdm

        bar = widget or tqdm
        bars = [bar(total=self.total, unit=self.short_unit, desc=f"{self.desc} {self.unit}", position=0,
                    leave=True)]
        if self.total_bytes is not None:
            bars.append(bar(total=self.total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                            desc=f"{self.desc} {'bytes':<{len(self.unit)}}", position=1, leave=True))
        return tuple(bars)

    def _one_line(self) -> tuple:
        from tqdm.std import tqdm

        bar = tqdm(total=self.total, unit=self.short_unit, desc=f"{self.desc} {self.unit}", mininterval=1.0)
        return (bar,) if self.total_bytes is None else (bar, _BytesAfterObjects(bar, self.total_bytes))

    @property
    def short_unit(self) -> str:
        """The unit as tqdm shows it in a rate: obj/s, part/s."""
        return "obj" if self.unit == "objects" else self.unit.rstrip("s")

    def update(self, objects: int, nbytes: int = 0) -> None:
        with self.lock:
            self.done += objects
            self.done_bytes += nbytes
            if self.bars:
                self.bars[0].update(objects)
                if len(self.bars) > 1:
                    self.bars[1].update(nbytes)
            elif self._due(self.every):
                log.info("%s", self.line())

    def tick(self) -> None:
        """Redraw the bars (their elapsed time and rate move on without updates); off a terminal, say
        where this stands when nothing was said for a while."""
        with self.lock:
            if self.redraw:
                for bar in self.bars:
                    if hasattr(bar, "refresh"):
                        bar.refresh()
            elif not self.bars and self._due(max(self.every, LOG_EVERY)):
                log.info("%s", self.line())

    def _due(self, every: float) -> bool:
        """Whether a log line is due (none for `every` seconds), and if so, that one is said now; the last
        line, at 100%, is close()'s."""
        if time.monotonic() - self.logged < every or self.done >= self.total:
            return False
        self.logged = time.monotonic()
        return True

    def line(self) -> str:
        """Where this stage stands, in one line."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        text = f"{self.desc}: {self.done}/{self.total} {self.unit}{share}"
        if self.total_bytes is not None:
            text += f", {human_bytes(self.done_bytes)} of {human_bytes(self.total_bytes)}"
            text += f", {human_bytes(self.done_bytes / elapsed)}/s"
        text += f", {self.done / elapsed:.1f} {self.unit}/s"
        if 0 < self.done < self.total:
            text += f", about {human_seconds((self.total - self.done) * elapsed / self.done)} left"
        return text

    def close(self) -> None:
        _live.closed(self)
        with self.lock:
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


class _Doing:
    """Something under way that has no total: what it is, since when, and what it counted so far."""

    def __init__(self, doing: str, draw: bool, announce: bool = True) -> None:
        self.doing, self.draw, self.announce = doing, draw, announce
        self.count, self.unit = 0, ""
        self.started = self.logged = time.monotonic()
        self.bar = None

    def line(self) -> str:
        counted = f", {self.count:,} {self.unit} so far" if self.unit else ""
        return f"{self.doing}... {time.monotonic() - self.started:.1f} s{counted}"

    def hide(self) -> None:
        if self.bar is not None:
            self.bar.close()  # leave=False: its line is cleared
            self.bar = None

    def show(self) -> None:
        width = shutil.get_terminal_size().columns - 1
        if self.bar is None:
            from tqdm.std import tqdm

            self.bar = tqdm(total=None, bar_format="{desc}", desc=self.line()[:width], leave=False,
                            file=sys.stderr)
        else:
            self.bar.set_description_str(self.line()[:width])


class _Live:
    """What is under way in this process: nested stages (the innermost shows) and open meters (which show
    instead). One daemon thread, alive only while something is, redraws the live line on a terminal every
    TICK seconds and elsewhere logs where things stand every LOG_EVERY seconds: no stage is silent."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.doing: list[_Doing] = []
        self.meters: list[Meter] = []
        self.thread: threading.Thread | None = None

    def _start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="dicom-deid-live", daemon=True)
            self.thread.start()

    def _retire_starting(self) -> None:
        """The line shown while the command starts gives way for good once a stage or meter speaks."""
        for doing in [d for d in self.doing if not d.announce]:
            doing.hide()
            self.doing.remove(doing)

    def push(self, doing: _Doing) -> None:
        with self.lock:
            if doing.announce:
                self._retire_starting()
            if self.doing:
                self.doing[-1].hide()
            self.doing.append(doing)
            self._start()

    def pop(self, doing: _Doing) -> None:
        with self.lock:
            doing.hide()
            if doing in self.doing:
                self.doing.remove(doing)

    def opened(self, meter: Meter) -> None:
        with self.lock:
            self._retire_starting()
            if self.doing:
                self.doing[-1].hide()
            self.meters.append(meter)
            self._start()

    def closed(self, meter: Meter) -> None:
        with self.lock:
            if meter in self.meters:
                self.meters.remove(meter)

    def count(self, n: int, unit: str) -> None:
        with self.lock:
            if self.doing:
                self.doing[-1].count += n
                self.doing[-1].unit = unit

    def end(self) -> None:
        with self.lock:
            for doing in self.doing:
                doing.hide()
            self.doing.clear()

    def _run(self) -> None:
        while True:
            time.sleep(TICK)
            with self.lock:
                if not self.doing and not self.meters:
                    self.thread = None
                    return
                try:
                    self._tick(time.monotonic())
                except Exception:  # a redraw that failed (a closed terminal) must not end the job
                    log.debug("live line not redrawn", exc_info=True)

    def _tick(self, now: float) -> None:
        for meter in self.meters:
            meter.tick()
        if self.meters or not self.doing:
            return
        top = self.doing[-1]
        if top.draw:
            top.show()
        elif top.announce and now - top.logged >= LOG_EVERY and _progress_here():
            top.logged = now
            log.info("%s", top.line())


_live = _Live()


@contextmanager
def stage(doing: str) -> Iterator[None]:
    """Say what is starting now and, while it runs, that it still does (a live line on a terminal, a line
    every few seconds elsewhere), so no stage is a blank screen; say how long it took when that was long."""
    started = time.monotonic()
    activity = _Doing(doing, draw=is_terminal() and _progress_here())
    _live.push(activity)  # first: the line shown before, if any, is cleared, not redrawn under this one
    log.info("%s...", doing)
    try:
        yield
    finally:
        _live.pop(activity)
    took = time.monotonic() - started
    counted = f" ({activity.count:,} {activity.unit})" if activity.unit else ""
    log.log(logging.INFO if took >= LONG_STAGE else logging.DEBUG, "%s: done in %.1f s%s", doing, took,
            counted)


def counted(n: int, unit: str = "objects") -> None:
    """Add to what the current stage found so far (a listing's objects), shown on its live line; in a
    process with no stage under way (a worker), nothing."""
    _live.count(n, unit)


@contextmanager
def starting(command: str | None) -> Iterator[None]:
    """On a terminal, a live line from the first moment ("dicom-deid run: starting... 0.8 s") while the
    pipeline's modules load and the job is checked, until the first stage speaks; None: no line."""
    if command is None or not is_terminal():
        yield
        return
    activity = _Doing(f"{command}: starting", draw=True, announce=False)
    _live.push(activity)
    try:
        yield
    finally:
        _live.pop(activity)


def end_live() -> None:
    """Clear the live line now, before a message that must stand alone (a usage error)."""
    _live.end()


def gathered(client, futures: list) -> list:
    """The futures' results in order, the length of each (a listing's rows) counted on the current stage's
    live line as it arrives."""
    from distributed import as_completed

    for future in as_completed(futures, loop=client.loop):
        counted(len(future.result()))
    return client.gather(futures)


def dask_setup(worker) -> None:
    """Dask preload hook for a local cluster's worker processes: a Ctrl-C at the terminal reaches them too,
    but only the driver should handle it (by closing them). A worker only falls silent, so that neither a
    traceback nor the heartbeat errors of a scheduler closing before it reach the terminal. Nor does a
    worker load pandas at its first table (pipeline/startup.py)."""
    from .startup import block_pandas

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda signum, frame: logging.disable(logging.CRITICAL))
    block_pandas()


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
