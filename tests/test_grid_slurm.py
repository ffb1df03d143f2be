"""caffe-cae grid --executor slurm on a real one-node Slurm cluster started by the test.

The cluster (tests/slurm_local.py) runs on localhost with its own munge key and socket,
ports and state in a temporary directory; the test stops its daemons at the end. Without
Debian's slurm-wlm and munge, or without the engine, the tests skip, and FAIL when
CAFFE_CAE_REQUIRE_ENGINE=1 (CI installs both, see .ci/run).
"""
import os
import re

import pytest

from caffe_cae import data, grid

from conftest import missing as not_there
from engine_support import require_engine
from slurm_local import LocalSlurm, missing_tools
from test_grid import N_TEST, N_TRAIN, SCHEDULE, TASKS_FILE, check_finished_run, run_grid


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = missing_tools()
    if missing:
        not_there("Slurm not installed (apt-get install slurm-wlm munge): missing %s" % ", ".join(missing))
    if os.geteuid() != 0:
        not_there("the throw-away Slurm cluster runs its daemons as root")
    slurm = LocalSlurm(str(tmp_path_factory.mktemp("slurm")))
    try:
        slurm.start()
        yield slurm
    finally:
        slurm.stop()
    assert all(p.poll() is not None for p in slurm.procs.values())


def test_cluster_runs_an_array_and_a_dependent_job(cluster, tmp_path):
    out = str(tmp_path)
    array = cluster.run("sbatch", "--parsable", "--array=0-2%2", "-o", out + "/t_%A_%a.out",
                        "--wrap", "echo task $SLURM_ARRAY_TASK_ID").strip()
    after = cluster.run("sbatch", "--parsable", "--dependency=afterany:" + array, "-o", out + "/after.out",
                        "--wrap", "ls %s | grep -c '^t_'" % out).strip()
    states = cluster.wait_jobs([array, after], timeout=120)
    assert states[array] == ["COMPLETED"] * 3 and states[after] == ["COMPLETED"], states
    for i in range(3):
        with open("%s/t_%s_%d.out" % (out, array, i)) as f:
            assert f.read().strip() == "task %d" % i
    with open(out + "/after.out") as f:
        assert f.read().strip() == "3"  # it ran after every task of the array had written


def test_slurm_grid_trains_every_run_and_reports(cluster, tmp_path):
    require_engine()
    root = str(tmp_path)
    data.write_tiny(os.path.join(root, "data", "hdf5"), n=N_TRAIN, n_test=N_TEST, list_prefix="data/hdf5")
    out = os.path.join(root, "runs")
    env = {"SLURM_CONF": cluster.conf, "PATH": cluster.env()["PATH"]}
    proc = run_grid("--executor", "slurm", "--nets", "model1,siamese", "--dims", "2", "--runs", "2",
                    "--iters", "20", "--jobs", "2", "--out", out, *SCHEDULE, cwd=root, extra_env=env)
    assert proc.returncode == 0, proc.stderr
    state = grid.read_json(os.path.join(out, "grid.json"))
    array, report = state["slurm"]["array_job"], state["slurm"]["report_job"]
    assert "job array %s" % array in proc.stdout and "report job %s" % report in proc.stdout
    # the task list is named as the dry run names it (tests/test_grid.py), and the array script runs it
    tasks = state["slurm"]["tasks_file"]
    assert re.fullmatch(TASKS_FILE.format(out=re.escape(out)), tasks) and os.path.isfile(tasks), tasks
    with open(os.path.join(out, "slurm", "grid_array.sh")) as f:
        assert ' grid-slurm task %s %s "$SLURM_ARRAY_TASK_ID"\n' % (out, tasks) in f.read()
    states = cluster.wait_jobs([array, report], timeout=1500)
    assert states[array] == ["COMPLETED"] * 4 and states[report] == ["COMPLETED"], (states, cluster.logs())

    state = grid.read_json(os.path.join(out, "grid.json"))
    assert sorted(state["runs"]) == ["model1_d2_run1", "model1_d2_run2", "siamese_d2_run1", "siamese_d2_run2"]
    for rid, entry in state["runs"].items():
        assert entry["status"] == "done", (rid, entry)
        check_finished_run(os.path.join(out, entry["dir"]), 20)
    logs = os.path.join(out, "slurm", "logs")
    for i in range(4):  # one log per array task, each naming its run
        with open(os.path.join(logs, "%s_%d.out" % (array, i))) as f:
            assert "[grid] " in f.read()
    with open(os.path.join(logs, "report_%s.out" % report)) as f:
        assert "report: %s" % os.path.join(out, "report", "index.html") in f.read()
    assert state["report"]["status"] == "done"
    with open(os.path.join(out, "report", "report.md")) as f:
        page = f.read()
    assert "model1" in page and "siamese" in page

    # submitting again finds nothing to do: only the report job is queued
    again = run_grid("--executor", "slurm", "--nets", "model1,siamese", "--dims", "2", "--runs", "2",
                     "--iters", "20", "--jobs", "2", "--out", out, *SCHEDULE, cwd=root, extra_env=env)
    assert again.returncode == 0 and "job array" not in again.stdout, again.stdout + again.stderr
