"""What a grid tells its user as it goes.

:class:`Lines` (output that is not a terminal: logs, pipes, CI, Slurm): one plain line per
event, ``[grid] RUN: STAGE (attempt N)`` as each stage starts, then failures and the outcome.
:class:`Bar` (a terminal): a tqdm bar of the runs finished out of the grid's total, with its
rate and ETA, one status line per worker (its run, stage and time in the stage), and the
other lines written above the bar. :func:`make` picks one for a stream.
"""
import os
import sys
import threading
import time

from ..progress import is_terminal


class Lines:
    """Every event as one plain line through ``log`` (thread-safe)."""

    def __init__(self, log=print):
        self._log = log
        self._lock = threading.Lock()

    def start(self, total, finished, workers):
        """The grid has ``total`` runs, ``finished`` of them already done or failed."""

    def line(self, message):
        with self._lock:
            self._log(message)

    def stage(self, label, what, attempt):
        """The calling worker starts ``what`` (a stage) of ``label`` (a run, or runs batched)."""
        self.line(f"[grid] {label}: {what} (attempt {attempt})")

    def idle(self):
        """The calling worker has finished its unit of work."""

    def finished(self, status):
        """A run ended: "done", "failed" or "interrupted"."""

    def tick(self):
        """Called about once a second: let the display show time passing."""

    def close(self):
        """The runs are over (lines after this stay plain)."""


class Bar(Lines):
    """A tqdm bar with one status line per worker on ``stream`` (a terminal)."""

    def __init__(self, stream):
        super().__init__(log=None)
        self._stream = stream
        self._bar, self._rows, self._state, self._slots, self._failed = None, [], [], {}, 0

    def start(self, total, finished, workers):
        from tqdm import tqdm

        try:  # a terminal that says it has no width (a new pseudo-terminal) gets 100 columns
            sized = os.get_terminal_size(self._stream.fileno()).columns > 0
        except (AttributeError, OSError, ValueError):
            sized = False
        with self._lock:
            self._bar = tqdm(total=total, initial=finished, desc="grid", unit="run", file=self._stream,
                             dynamic_ncols=sized, ncols=None if sized else 100, position=0, smoothing=0)
            self._rows = [tqdm(bar_format="{desc}", desc=f"  worker {i + 1}: idle", file=self._stream,
                               position=i + 1, leave=False) for i in range(workers)]
            self._slots, self._state = {}, [None] * workers

    def line(self, message):
        from tqdm import tqdm

        with self._lock:
            tqdm.write(message, file=self._stream)

    def _slot(self):
        """This worker thread's status line (one per pool thread, given on first use)."""
        ident = threading.get_ident()
        if ident not in self._slots:
            self._slots[ident] = len(self._slots) % max(1, len(self._rows))
        return self._slots[ident]

    def stage(self, label, what, attempt):
        with self._lock:
            if self._bar is None:
                return
            again = f" (attempt {attempt})" if attempt > 1 else ""
            self._state[self._slot()] = (f"{label}: {what}{again}", time.monotonic())
            self._show()

    def idle(self):
        with self._lock:
            if self._bar is not None:
                self._state[self._slot()] = None
                self._show()

    def finished(self, status):
        with self._lock:
            if self._bar is None or status not in ("done", "failed"):
                return
            self._failed += status == "failed"
            if self._failed:
                self._bar.set_postfix_str(f"{self._failed} failed", refresh=False)
            self._bar.update(1)

    def tick(self):
        with self._lock:
            if self._bar is not None:
                self._show()

    def _show(self):
        for i, (row, state) in enumerate(zip(self._rows, self._state)):
            if state is None:
                text = "idle"
            else:
                seconds = int(time.monotonic() - state[1])
                text = "%s, %d:%02d" % (state[0], seconds // 60, seconds % 60)
            row.set_description_str(f"  worker {i + 1}: {text}", refresh=True)
        self._bar.refresh()

    def close(self):
        with self._lock:
            for row in self._rows:
                row.close()
            if self._bar is not None:
                self._bar.close()
            self._bar, self._rows = None, []


def make(stream=None):
    """A :class:`Bar` when ``stream`` (default: stderr) is a terminal, else :class:`Lines` on it."""
    stream = stream or sys.stderr
    if is_terminal(stream):
        return Bar(stream)
    return Lines(lambda message: print(message, file=stream, flush=True))
