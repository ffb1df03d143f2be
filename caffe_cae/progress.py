"""Training progress: a tqdm bar on a terminal, plain lines (at each log record) otherwise."""
import sys
import time

from tqdm import tqdm


def fmt_losses(loss):
    return " ".join("%s=%.6g" % kv for kv in sorted(loss.items()))


def short_losses(loss):
    """``cr=70 eu=8``: the bar's compact form (``con`` for contrastive)."""
    return " ".join("%s=%.4g" % (k[:2] if k != "contrastive" else "con", v) for k, v in sorted(loss.items()))


def is_terminal(stream):
    """Whether ``stream`` is a terminal (a bar) rather than a file or pipe (plain lines)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


class Progress:
    """One run's progress on ``stream`` (stderr by default); ``tty`` None: ask the stream."""

    def __init__(self, label, total, stream=None, tty=None, initial=0, mininterval=0.25):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = is_terminal(self.stream) if tty is None else tty
        self.label = label
        self.total = total
        self.marks = []  # (time, iter): the rate of the plain lines
        self.bar = None
        self.initial = initial
        self.mininterval = mininterval

    def _bar(self):
        if self.bar is None:
            self.bar = tqdm(total=self.total, initial=self.initial, desc=self.label, file=self.stream,
                            unit="it", mininterval=self.mininterval, dynamic_ncols=True, leave=True,
                            bar_format="{desc} {bar:20} {n_fmt}/{total_fmt}{postfix} | {rate_fmt} | ETA {remaining}")
        return self.bar

    def rate(self):
        if len(self.marks) < 2:
            return None
        (t0, i0), (t1, i1) = self.marks[0], self.marks[-1]
        return (i1 - i0) / (t1 - t0) if t1 > t0 and i1 > i0 else None

    def update(self, it, loss, t=None):
        self.marks = (self.marks + [(t or time.time(), it)])[-40:]
        if self.tty:
            bar = self._bar()
            bar.set_postfix_str(short_losses(loss), refresh=False)
            bar.update(it - bar.n)

    def status(self, text):
        """A passing state (e.g. a test pass) shown in the bar on a terminal."""
        if self.tty:
            self._bar().set_postfix_str(text)

    def record(self, record):
        """A log record: on a terminal the test records as lines; otherwise every record."""
        if self.tty:
            if record["phase"] != "train":
                self.note("%s iter %d %s" % (record["phase"], record["iter"], fmt_losses(record["loss"])))
            return
        rate = self.rate()
        self.stream.write("%s iter %d/%d %s %s%s\n" % (
            self.label, record["iter"], self.total, record["phase"], fmt_losses(record["loss"]),
            " (%.1f it/s)" % rate if rate and record["phase"] == "train" else ""))
        self.stream.flush()

    def note(self, text):
        """A line of its own (above the bar on a terminal)."""
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
