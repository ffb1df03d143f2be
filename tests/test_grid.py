"""caffe-cae grid: the plan, the refusals before any training, and real grids in the engine
(a short grid with its re-run, and a worker killed twice in the middle of runs).

Engine tests skip without an engine, and FAIL when CAFFE_CAE_REQUIRE_ENGINE=1 (CI).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from caffe_cae import REPO_ROOT, data, grid
from caffe_cae.errors import CaeError

from conftest import missing
from engine_support import require_engine

#: tiny data: the analysis's 10-fold cross-validation wants some tens of test images per digit
N_TRAIN, N_TEST = 250, 300
SCHEDULE = ["--set", "solver.display=5", "--set", "solver.test_interval=10", "--set", "solver.snapshot=5",
            "--analyze-arg=--mlp-epochs=50"]
#: the task list of a Slurm submission (regular expression; ``out`` escaped)
TASKS_FILE = r"{out}/slurm/tasks-\d{{8}}-\d{{6}}\.json"


def run_grid(*args, cwd=None, timeout=1200, extra_env=None):
    env = dict(os.environ, **(extra_env or {}))
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "caffe_cae", "grid", *args], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          timeout=timeout)


def one_line_error(proc, *words):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("caffe-cae: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# -- the plan -------------------------------------------------------------------------

def test_paper_grid_is_63_runs_with_the_papers_code_sizes():
    plan = grid.expand(grid.parse_nets("all"), grid.parse_dims("paper"), 3)
    assert len(plan) == 7 * 3 * 3
    assert len({r["id"] for r in plan}) == len({r["dir"] for r in plan}) == 63
    assert sorted({r["dim"] for r in plan if r["net"] == "siamese"}) == [2, 10, 20]
    assert sorted({r["dim"] for r in plan if r["net"] == "model3"}) == [2, 10, 30]
    assert {r["seed"] for r in plan} == {1, 2, 3}
    assert {"id": "model3_d30_run2", "net": "model3", "dim": 30, "seed": 2, "dir": "model3_d30/run2"} in plan


def test_short_grid_selection():
    plan = grid.expand(grid.parse_nets("model1,model4"), grid.parse_dims("2,10"), 1)
    assert [r["id"] for r in plan] == ["model1_d2_run1", "model1_d10_run1", "model4_d2_run1", "model4_d10_run1"]
    for bad in ("model9", "", "model1,,x"):
        with pytest.raises(CaeError, match="--nets"):
            grid.parse_nets(bad)
    for bad in ("0", "2,x", ""):
        with pytest.raises(CaeError, match="--dims"):
            grid.parse_dims(bad)


def test_bad_option_is_one_line(tmp_path):
    one_line_error(run_grid("--nets", "model9", "--out", str(tmp_path / "g")), "--nets", "model9")
    assert not (tmp_path / "g").exists()


def test_slurm_dry_run_prints_both_scripts_and_submits_nothing(tmp_path):
    out = tmp_path / "g"
    proc = run_grid("--executor", "slurm", "--dry-run", "--nets", "model1,model4", "--dims", "2",
                    "--runs", "2", "--jobs", "3", "--iters", "20", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "#SBATCH --array=0-3%3" in text
    assert "--dependency=afterany:" in text
    assert "-m caffe_cae grid-slurm task" in text and "-m caffe_cae grid-slurm report" in text
    # the task list named is the one a submission now would write (tests/test_grid_slurm.py)
    assert re.search(r" %s \"\$SLURM_ARRAY_TASK_ID\"\n" % TASKS_FILE.format(out=re.escape(str(out))), text), text
    assert "#SBATCH --output=%s/slurm/logs/%%A_%%a.out" % out in text
    assert not out.exists()
    array = text.split("# --- grid_array.sh\n")[1].split("# --- grid_report.sh")[0]
    report = text.split("# --- grid_report.sh")[1].split("\n", 1)[1]
    assert array.startswith("#!/bin/bash\n") and report.startswith("#!/bin/bash\n")
    if shutil.which("shellcheck") is None:
        missing("shellcheck missing (.ci/run installs it)")
    for name, body in (("array.sh", array), ("report.sh", report)):
        (tmp_path / name).write_text(body)
    lint = subprocess.run(["shellcheck", str(tmp_path / "array.sh"), str(tmp_path / "report.sh")],
                          stdout=subprocess.PIPE, universal_newlines=True)
    assert lint.returncode == 0, lint.stdout


def test_local_dry_run_lists_the_stages(tmp_path):
    proc = run_grid("--dry-run", "--nets", "deep_ae", "--dims", "2", "--runs", "2", "--iters", "20",
                    "--out", str(tmp_path / "g"), "--jobs", "2", "--analyze-arg=--folds=3",
                    "--set", "solver.display=5")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert sum(" train --net deep_ae --dim 2 --mode cpu --iters 20 --seed " in ln for ln in lines) == 2
    assert sum("-m caffe_cae extract " in ln for ln in lines) == 2
    threads = max(1, grid.usable_cores() // 2)
    assert sum("-m caffe_cae analyze --jobs %d --folds=3 " % threads in ln for ln in lines) == 2
    assert sum(" --set solver.display=5" in ln for ln in lines) == 2
    assert "-m caffe_cae report " in lines[-1] and lines[-1].endswith("--out %s" % (tmp_path / "g" / "report"))


# -- refusals before any training -----------------------------------------------------

def test_output_path_under_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    line = one_line_error(run_grid("--nets", "model1", "--dims", "2", "--runs", "1", "--iters", "20",
                                   "--out", str(tmp_path / "file" / "runs")), "--out", "cannot create")
    assert str(tmp_path / "file" / "runs") in line


def _in_own_mount(tmp_path, mount_opts, *grid_args):
    """Run the grid with its --out on a fresh tmpfs (private mount namespace; needs root)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to mount a small tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    script = 'mount -t tmpfs -o "$1" tmpfs "$2" && shift 2 && exec "$@"'
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", mount_opts, str(mnt),
            sys.executable, "-m", "caffe_cae", "grid", *grid_args, "--out", str(mnt / "runs")]
    proc = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=120)
    assert not list(mnt.iterdir())  # the tmpfs was private to the grid's namespace
    return proc


def test_read_only_output_dir_is_refused_before_training(tmp_path):
    proc = _in_own_mount(tmp_path, "size=4m,ro", "--nets", "model1", "--dims", "2", "--runs", "1")
    one_line_error(proc, "--out", "cannot create", "Read-only file system")


def test_full_disk_is_refused_before_training(tmp_path):
    proc = _in_own_mount(tmp_path, "size=8m", "--nets", "model1,model2", "--dims", "2", "--runs", "1")
    one_line_error(proc, "--out", "MB free", "2 unfinished runs need about")


# -- real grids in the engine ---------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    require_engine()
    root = str(tmp_path_factory.mktemp("grid_tiny"))
    data.write_tiny(os.path.join(root, "data", "hdf5"), n=N_TRAIN, n_test=N_TEST, list_prefix="data/hdf5")
    return root


def read_log(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def check_finished_run(run_dir, iters):
    """A finished run: manifest, log without repeated records, codes, analysis."""
    manifest = grid.read_json(os.path.join(run_dir, "manifest.json"))
    assert manifest["status"] == "finished" and manifest["iterations"] == iters
    records = read_log(run_dir)
    keys = [(r["iter"], r["phase"]) for r in records]
    assert len(keys) == len(set(keys)), "log.jsonl repeats records: %s" % keys
    assert [i for i, phase in keys if phase == "train"] == list(range(5, iters + 1, 5))
    assert max(i for i, _ in keys) == iters
    for name in ("codes.h5", "blobs_digit5.h5", "analysis.json"):
        assert os.path.isfile(os.path.join(run_dir, name)), name
    assert not os.path.exists(os.path.join(run_dir, "failed.json"))
    return manifest


def test_short_grid_runs_every_stage_once_and_rerun_does_nothing(tiny_root):
    out = os.path.join(tiny_root, "short")
    args = ["--nets", "model1,siamese", "--dims", "2", "--runs", "1", "--iters", "20", "--jobs", "2",
            "--out", out, *SCHEDULE]
    proc = run_grid(*args, cwd=tiny_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "report: %s" % os.path.join(out, "report", "index.html") in proc.stdout
    assert "\r" not in proc.stderr and "\x1b[" not in proc.stderr  # not a terminal: plain lines, no bar
    assert "[grid] model1_d2_run1: train (attempt 1)\n" in proc.stderr
    state = grid.read_json(os.path.join(out, "grid.json"))
    assert {k: v["status"] for k, v in state["runs"].items()} == {"model1_d2_run1": "done",
                                                                  "siamese_d2_run1": "done"}
    assert state["report"]["status"] == "done"
    stamps = {}
    for rid, entry in state["runs"].items():
        run_dir = os.path.join(out, entry["dir"])
        check_finished_run(run_dir, 20)
        with open(os.path.join(out, entry["log"])) as f:
            log = f.read()
        for stage in grid.STAGES:
            assert log.count("%s attempt 1:" % stage) == 1, log
        stamps[rid] = {n: os.stat(os.path.join(run_dir, n)).st_mtime_ns
                       for n in ("manifest.json", "log.jsonl", "codes.h5", "analysis.json")}
    with open(os.path.join(out, "report", "index.html")) as f:
        page = f.read()
    assert "model1" in page and "siamese" in page

    again = run_grid(*args, cwd=tiny_root)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 to do" in again.stderr and "] model1_d2_run1: train" not in again.stderr
    for rid, entry in grid.read_json(os.path.join(out, "grid.json"))["runs"].items():
        run_dir = os.path.join(out, entry["dir"])
        assert stamps[rid] == {n: os.stat(os.path.join(run_dir, n)).st_mtime_ns for n in stamps[rid]}


def _pids_running(needle):
    """Process ids whose command line contains every string of ``needle``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if all(n in cmd for n in needle):
            found.append(int(pid))
    return found


def _wait_for_snapshot(run_dir, proc, at_least, timeout=600):
    """Wait until the run in ``run_dir`` has a snapshot at iteration >= at_least; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the grid ended before the kill: %s" % proc.stderr.read()[-2000:]
        manifest = grid.read_json(os.path.join(run_dir, "manifest.json")) or {}
        snaps = [s["iter"] for s in manifest.get("snapshots") or []]
        if manifest.get("status") == "running" and snaps and max(snaps) >= at_least:
            return max(snaps)
        time.sleep(0.2)
    pytest.fail("no snapshot at iteration >= %d in %s within %d s" % (at_least, run_dir, timeout))


def test_killed_worker_and_killed_grid_lose_and_repeat_nothing(tiny_root):
    """SIGKILL the train subprocess (the grid retries it at once, resuming), then SIGKILL the
    whole grid in the middle of the next run and run the grid again: both runs finish, each
    resumed from a snapshot, every log record once, the grid state and the report complete."""
    out = os.path.join(tiny_root, "faults")
    iters = 60
    args = ["--nets", "model1", "--dims", "2", "--runs", "2", "--iters", str(iters), "--jobs", "1",
            "--out", out, *SCHEDULE]
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen([sys.executable, "-m", "caffe_cae", "grid", *args], cwd=tiny_root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                            start_new_session=True)
    try:
        run1, run2 = os.path.join(out, "model1_d2", "run1"), os.path.join(out, "model1_d2", "run2")
        kill1 = _wait_for_snapshot(run1, proc, 10)
        trains = _pids_running(["caffe_cae", "train", "--out", run1])
        assert len(trains) == 1, trains
        os.kill(trains[0], signal.SIGKILL)
        kill2 = _wait_for_snapshot(run2, proc, 10)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    time.sleep(1)
    assert not _pids_running(["caffe_cae", "--out", out]), "a stage outlived the killed grid"
    state = grid.read_json(os.path.join(out, "grid.json"))
    assert state["runs"]["model1_d2_run1"]["status"] in ("running", "done")
    assert state["runs"]["model1_d2_run2"]["status"] == "running"  # what a crash leaves behind

    again = run_grid(*args, cwd=tiny_root)
    assert again.returncode == 0, again.stderr[-3000:]
    state = grid.read_json(os.path.join(out, "grid.json"))
    assert {k: v["status"] for k, v in state["runs"].items()} == {"model1_d2_run1": "done",
                                                                  "model1_d2_run2": "done"}
    assert state["report"]["status"] == "done"
    for run_dir, killed_after in ((run1, kill1), (run2, kill2)):
        manifest = check_finished_run(run_dir, iters)
        sessions = manifest["sessions"]
        assert len(sessions) >= 2, sessions
        assert sessions[0]["from_iter"] == 0
        assert all(s["from_iter"] >= killed_after for s in sessions[1:]), (killed_after, sessions)
    with open(os.path.join(out, state["runs"]["model1_d2_run1"]["log"])) as f:
        log1 = f.read()
    assert "train exit status -9" in log1 and "train attempt 2:" in log1 and " --resume" in log1
    with open(os.path.join(out, state["runs"]["model1_d2_run2"]["log"])) as f:
        log2 = f.read()
    assert log2.count("extract attempt") == 1 and log2.count("analyze attempt") == 1


def test_run_failing_twice_is_recorded_and_reported(tiny_root):
    out = os.path.join(tiny_root, "failing")
    # a real failure: ReLU with a large learning rate, the loss goes non-finite (Section 5.2)
    args = ["--nets", "model2", "--dims", "2", "--runs", "1", "--iters", "40", "--out", out,
            "--set", "net.activation=relu", "--set", "solver.base_lr=10", *SCHEDULE]
    proc = run_grid(*args, cwd=tiny_root)
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    assert "0 done, 1 failed" in proc.stdout
    entry = grid.read_json(os.path.join(out, "grid.json"))["runs"]["model2_d2_run1"]
    assert entry["status"] == "failed" and entry["attempts"] == 2
    assert entry["error"]["stage"] == "train" and entry["error"]["message"]
    failed = grid.read_json(os.path.join(out, "model2_d2", "run1", "failed.json"))
    assert failed["stage"] == "train" and failed["attempts"] == 2
    with open(os.path.join(out, entry["log"])) as f:
        assert f.read().count("train exit status 1") == 2
    with open(os.path.join(out, "report", "report.md")) as f:
        assert "model2_d2/run1" in f.read()
    # a re-run keeps it as failed (it failed twice) and does not train it again
    again = run_grid(*args, cwd=tiny_root)
    assert again.returncode == 1 and "train (attempt" not in again.stderr


def test_sigterm_stops_the_grid_cleanly_for_the_next_one(tiny_root):
    """SIGTERM to the grid: the running train snapshots and stops, nothing is retried, the
    run is left 'interrupted' (not failed) for the next grid, and the grid exits 130."""
    out = os.path.join(tiny_root, "sigterm")
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen([sys.executable, "-m", "caffe_cae", "grid", "--nets", "model1", "--dims", "2",
                             "--runs", "1", "--iters", "200", "--out", out, *SCHEDULE], cwd=tiny_root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                            start_new_session=True)
    try:
        run_dir = os.path.join(out, "model1_d2", "run1")
        _wait_for_snapshot(run_dir, proc, 5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "attempt 2" not in err
    entry = grid.read_json(os.path.join(out, "grid.json"))["runs"]["model1_d2_run1"]
    assert entry["status"] == "interrupted" and entry["attempts"] == 1
    manifest = grid.read_json(os.path.join(run_dir, "manifest.json"))
    assert manifest["status"] == "interrupted" and 0 < manifest["iterations"] < 200
    assert not os.path.exists(os.path.join(out, "report"))
    assert not os.path.exists(os.path.join(run_dir, "failed.json"))
    dry = run_grid("--dry-run", "--nets", "model1", "--dims", "2", "--runs", "1", "--iters", "200",
                   "--out", out, *SCHEDULE, cwd=tiny_root)
    assert " train --net model1 " in dry.stdout and dry.stdout.count(" --resume") == 1
