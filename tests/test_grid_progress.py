"""The grid's progress: a tqdm bar with a status line per worker on a terminal (a pseudo-terminal
here), plain lines on a pipe; in-process and through a real grid (torch backend, no engine)."""
import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
import time

from caffe_cae import REPO_ROOT, data
from caffe_cae.grid import progress

from engine_support import require_torch
from test_grid import N_TEST, N_TRAIN, SCHEDULE, run_grid

#: tqdm's "n/total [elapsed<remaining" with a known remaining time (the ETA)
ETA = r"%d/%d \[\d\d:\d\d<\d\d:\d\d"


def terminal(columns=150, rows=40):
    """A pseudo-terminal (master, slave) of the given size."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    return master, slave


def read_all(fd):
    """Everything written to the pseudo-terminal whose master is ``fd`` until its slave closes."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: every slave end is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def drive(display):
    """A grid of 4 runs, 1 finished before; two workers each do a run, one run fails."""
    display.start(4, 1, 2)
    display.line("[grid] 4 runs, 1 already finished or failed, 3 to do with 2 workers x 1 threads")
    done = threading.Event()

    def worker(run_id, stage, status):
        display.stage(run_id, stage, 1)
        done.wait(5)
        time.sleep(0.3 if status == "done" else 0.6)
        display.idle()
        display.finished(status)

    threads = [threading.Thread(target=worker, args=("model1_d2_run1", "train", "done")),
               threading.Thread(target=worker, args=("model4_d2_run1", "extract", "failed"))]
    for t in threads:
        t.start()
    time.sleep(0.2)
    display.tick()
    done.set()
    for t in threads:
        t.join()
    display.stage("model4_d2_run2", "analyze", 2)
    display.tick()
    display.close()
    display.line("[grid] report: after the bar")


def test_a_terminal_gets_a_bar_with_the_workers_and_an_eta():
    master, slave = terminal()
    stream = os.fdopen(slave, "w")
    display = progress.make(stream)
    assert isinstance(display, progress.Bar)
    output = []
    reader = threading.Thread(target=lambda: output.append(read_all(master)))
    reader.start()
    drive(display)
    stream.close()
    reader.join(10)
    os.close(master)
    text = output[0]
    assert "\r" in text and "\x1b[" in text                      # redrawn in place
    assert re.search(r"grid: +25%.*1/4 ", text), text            # the finished run counts from the start
    assert re.search(ETA % (3, 4), text) and re.search(ETA % (2, 4), text), text
    assert "1 failed" in text
    assert re.search(r"worker 1: model1_d2_run1: train, 0:0\d", text), text
    assert re.search(r"worker 2: model4_d2_run1: extract, 0:0\d", text), text
    assert "model4_d2_run2: analyze (attempt 2)" in text and "worker 1: idle" in text
    assert "[grid] 4 runs, 1 already finished" in text and "[grid] report: after the bar" in text
    assert "[grid] model1_d2_run1: train (attempt 1)" not in text  # the status line says it


def test_a_pipe_gets_plain_lines():
    read, write = os.pipe()
    stream = os.fdopen(write, "w")
    display = progress.make(stream)
    assert isinstance(display, progress.Lines) and not isinstance(display, progress.Bar)
    drive(display)
    stream.close()
    with os.fdopen(read) as f:
        lines = f.read().splitlines()
    assert lines[0] == "[grid] 4 runs, 1 already finished or failed, 3 to do with 2 workers x 1 threads"
    assert sorted(lines[1:3]) == ["[grid] model1_d2_run1: train (attempt 1)",
                                  "[grid] model4_d2_run1: extract (attempt 1)"]
    assert lines[3:] == ["[grid] model4_d2_run2: analyze (attempt 2)", "[grid] report: after the bar"]


def test_a_real_grid_on_a_terminal_shows_the_bar(tmp_path):
    """One run (torch backend, 20 iterations on tiny MNIST) through train, extract and analyze,
    the grid's stderr a pseudo-terminal: the bar ends at 1/1 and the worker's line named each stage."""
    require_torch()
    root = str(tmp_path)
    data.write_tiny(os.path.join(root, "data", "hdf5"), n=N_TRAIN, n_test=N_TEST, list_prefix="data/hdf5")
    out = os.path.join(root, "runs")
    args = ["--backend", "torch", "--nets", "model1", "--dims", "2", "--runs", "1", "--iters", "20",
            "--out", out, *SCHEDULE, "--analyze-arg=--folds=3", "--analyze-arg=--no-diagram"]
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    master, slave = terminal()
    proc = subprocess.Popen([sys.executable, "-m", "caffe_cae", "grid", *args], cwd=root, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    output = []
    reader = threading.Thread(target=lambda: output.append(read_all(master)))
    reader.start()
    stdout, _ = proc.communicate(timeout=900)
    reader.join(30)
    os.close(master)
    text = output[0]
    assert proc.returncode == 0, text[-3000:]
    assert re.search(r"grid: +100%.*1/1 \[", text), text[-3000:]
    for stage in ("train", "extract", "analyze"):
        assert re.search(r"worker 1: model1_d2_run1: %s, \d+:\d\d" % stage, text), (stage, text[-3000:])
    assert "[grid] 1 runs, 0 already finished or failed, 1 to do" in text
    assert "(attempt 1)" not in text and "report: %s" % os.path.join(out, "report", "index.html") in text
    assert "grid: 1 done, 0 failed of 1 runs" in stdout.decode()
    again = run_grid(*args, cwd=root)                             # a pipe: plain lines only
    assert again.returncode == 0 and "0 to do" in again.stderr and "\r" not in again.stderr


def test_the_slurm_jobs_are_hidden_commands_with_one_line_errors(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")

    def cae(*args):
        return subprocess.run([sys.executable, "-m", "caffe_cae", *args], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True)

    assert "grid-slurm" not in cae("--help").stdout and " grid " in cae("--help").stdout
    (tmp_path / "tasks.json").write_text('{"tasks": [], "config": {}}')
    for args, words in ((("task", str(tmp_path), str(tmp_path / "missing.json"), "0"), ("missing.json", "task list")),
                        (("task", str(tmp_path), str(tmp_path / "tasks.json"), "3"), ("no task 3",)),
                        (("report", str(tmp_path)), ("grid.json", "grid directory"))):
        proc = cae("grid-slurm", *args)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith("caffe-cae: error: ") and all(w in proc.stderr for w in words), proc.stderr
