"""What ``vadapt infer`` says: the plan, notes and progress (standard output), failures (standard error), a status
line while the model loads; on a terminal the status line and the progress bar are redrawn in place (standard
error), in a log every one is a plain line."""

from __future__ import annotations

import contextlib
import itertools
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


class Console:
    """Everything a run says: lines (the plan, notes) on standard output unless quiet, failures on standard error
    always (one line each, so a mistake stays one short message there), a status line while something slow runs
    and the progress over files.

    On a terminal the status line and the progress bar are redrawn in place; anywhere else (a log file, a pipe)
    each is a plain line: no carriage return, no ANSI escape sequence (in a notebook, the progress is tqdm's widget).
    """

    SPINNER = "|/-\\"
    REDRAW_S = 0.1

    def __init__(self, verbose: bool = True, stream: Any = None, out: Any = None) -> None:
        self.stream = stream if stream is not None else sys.stderr  # failures, and the live status and bar
        self.out = out if out is not None else (self.stream if stream is not None else sys.stdout)  # the rest
        self.verbose = verbose
        isatty = getattr(self.stream, "isatty", None)
        self.live = verbose and callable(isatty) and bool(isatty())

    def say(self, text: str) -> None:
        """One line (the plan, notes, progress in a log) on standard output, unless quiet; above a live progress
        bar when there is one."""
        if not self.verbose:
            return
        if self.live:
            self.alert(text)
        else:
            print(text, file=self.out, flush=True)

    def alert(self, text: str) -> None:
        """One line on standard error even when quiet (a failure); above a live progress bar when there is one."""
        if self.live:
            from tqdm.auto import tqdm

            tqdm.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    @contextlib.contextmanager
    def status(self, text: str, transient: bool = False) -> Iterator[Status]:
        """While the block runs: on a terminal, ``text`` with a spinner and the seconds elapsed, redrawn in place,
        then left as ``text ... 3.2 s`` (``transient``: erased); elsewhere ``text ...`` once (``transient``: nothing).
        The yielded :class:`Status` changes the text."""
        state = Status(text)
        if not self.live:
            if not transient:
                self.say(f"{text} ...")
            yield state
            return
        started, stop = time.perf_counter(), threading.Event()

        def draw(mark: str) -> None:
            self.stream.write(f"\r{mark}{state.text} ... {time.perf_counter() - started:.1f} s\x1b[K")
            self.stream.flush()

        def spin() -> None:
            for mark in itertools.cycle(self.SPINNER):
                draw(f"{mark} ")
                if stop.wait(self.REDRAW_S):
                    return

        spinner = threading.Thread(target=spin, name="vadapt-status", daemon=True)
        spinner.start()
        failed = True
        try:
            yield state
            failed = False
        finally:
            stop.set()
            spinner.join()
            if transient and not failed:
                self.stream.write("\r\x1b[K")
            else:
                draw("")
                self.stream.write(" (failed)\n" if failed else "\n")
            self.stream.flush()

    def progress(self, total: int, desc: str) -> Any:
        """A progress over ``total`` files: a tqdm bar on a terminal (or a notebook's widget), :class:`LineProgress`
        elsewhere (silent when quiet). Either has ``update()``, ``set_postfix(...)`` and ``close()``."""
        from tqdm.auto import tqdm

        notebook = any(kind.__module__ == "tqdm.notebook" for kind in tqdm.__mro__)  # tqdm.auto chose the widget
        if self.live or (self.verbose and notebook):
            return tqdm(total=total, unit="file", dynamic_ncols=True, desc=desc, file=self.stream)
        return LineProgress(total, desc, self.say)


@dataclass
class Status:
    """The text of a :meth:`Console.status` line; set :attr:`text` to change it (read by the redrawing thread)."""

    text: str


class LineProgress:
    """Progress for logs: a plain line at the first file, then at most every ``interval`` seconds, and at the end,
    e.g. ``vadapt infer: 40/120 files, tiles_per_s=11.6``. The methods of the tqdm bar the run uses."""

    def __init__(self, total: int, desc: str, say: Callable[[str], None], interval: float = 10.0) -> None:
        self.total, self.desc, self.say, self.interval = total, desc, say, interval
        self.n, self.shown, self.postfix, self.last = 0, 0, "", -math.inf

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.perf_counter() - self.last >= self.interval:
            self._line()

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def close(self) -> None:
        if self.n != self.shown:
            self._line()

    def _line(self) -> None:
        self.say(f"{self.desc}: {self.n}/{self.total} files{f', {self.postfix}' if self.postfix else ''}")
        self.shown, self.last = self.n, time.perf_counter()
