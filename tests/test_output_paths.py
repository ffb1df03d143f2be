"""Every command that writes turns a bad output path into one line naming it, exit 2.

Three kinds of bad path (:func:`bad_paths`): a file where a directory is wanted (or a
directory where a file is wanted), a path the system cannot hold (under /proc) and a path
below a regular file. Each command's output goes through :mod:`caffe_cae.files`, the one
place that makes that line; nothing may be left half-written. Root writes anywhere else, so
these are the bad paths a test run as root can make.

The mode tests run every writing command under an unusual umask: each written file gets
0666 less it, as open() would give it. The train and extract cases run the torch backend
(no engine needed; PyTorch required in CI).
"""
import os
import stat

import pytest

from caffe_cae import REPO_ROOT
from caffe_cae.data import write_tiny

from engine_support import cli, require_torch

VENDORED = os.path.join(REPO_ROOT, "data", "mnist")
KINDS = ("existing", "proc", "under_file")


def bad_path(tmp_path, kind, want):
    """A bad output path of ``kind`` for an output that is a ``want`` ("dir" or "file")."""
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way\n")
    if kind == "existing":
        if want == "dir":
            return str(blocker)
        folder = tmp_path / "a_dir.out"
        folder.mkdir()
        return str(folder)
    if kind == "proc":
        return "/proc/caffe-cae-x" if want == "dir" else "/proc/caffe-cae-y.out"
    return str(blocker / "sub")


def one_line(proc, path):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("caffe-cae: error: ") and path in lines[0], lines[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tiny"))
    write_tiny(os.path.join(root, "data", "hdf5"), n=250, n_test=150, list_prefix="data/hdf5")
    return root


@pytest.fixture(scope="module")
def good_legacy(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("legacy"))
    proc = cli("render", "--net", "model1", "--dim", "2", "--syntax", "legacy", "--out", out)
    assert proc.returncode == 0, proc.stderr
    return os.path.join(out, "model1_d2_train_test.prototxt")


@pytest.mark.parametrize("kind", KINDS)
def test_render(tmp_path, kind):
    path = bad_path(tmp_path, kind, "dir")
    one_line(cli("render", "--net", "model4", "--dim", "2", "--out", path), path)


@pytest.mark.parametrize("kind", KINDS)
def test_render_paper_grid(tmp_path, kind):
    path = bad_path(tmp_path, kind, "dir")
    one_line(cli("render", "--paper-grid", "--out", path), path)


@pytest.mark.parametrize("kind", KINDS)
def test_upgrade(tmp_path, good_legacy, kind):
    path = bad_path(tmp_path, kind, "file")
    one_line(cli("upgrade", good_legacy, "-o", path), path)


@pytest.mark.parametrize("kind", KINDS)
def test_data(tmp_path, kind):
    path = bad_path(tmp_path, kind, "dir")
    one_line(cli("data", "--mnist-dir", VENDORED, "--out", path), path)


@pytest.mark.parametrize("kind", KINDS)
def test_report(tmp_path, kind):
    run = tmp_path / "runs" / "model4_d2" / "run1"
    run.mkdir(parents=True)
    path = bad_path(tmp_path, kind, "dir")
    one_line(cli("report", str(run), "--out", path), path)


@pytest.mark.parametrize("kind", KINDS)
def test_bench(tmp_path, kind):
    require_torch()
    path = bad_path(tmp_path, kind, "file")
    one_line(cli("bench", "--backend", "torch", "--no-harness", "--nets", "model1", "--warmup", "0", "--repeats", "1",
                 "--iters", "1", "--out", path), path)
    one_line(cli("bench", "--backend", "caffe,torch", "--no-harness", "--nets", "model1", "--out", path), path)


@pytest.mark.parametrize("kind", KINDS)
def test_train(tmp_path, tiny, kind):
    require_torch()
    path = bad_path(tmp_path, kind, "dir")
    one_line(cli("train", "--backend", "torch", "--net", "model2", "--dim", "2", "--iters", "1", "--out", path,
                 cwd=tiny), path)


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    require_torch()
    run = str(tmp_path_factory.mktemp("run") / "model2")
    proc = cli("train", "--backend", "torch", "--net", "model2", "--dim", "2", "--iters", "1", "--out", run, cwd=tiny)
    assert proc.returncode == 0, proc.stderr
    return run


@pytest.mark.parametrize("name", ["codes.h5", "blobs_digit5.h5", "codes_train.h5"])
def test_extract_over_a_directory(trained, name):
    target = os.path.join(trained, name)
    os.mkdir(target)
    try:
        split = "train" if name == "codes_train.h5" else "test"
        one_line(cli("extract", trained, "--split", split), target)
        assert not [n for n in os.listdir(trained) if n.startswith(".tmp-")]
    finally:
        os.rmdir(target)


# --------------------------------------------------------------------------- file modes
#: not the usual 022, so that a file written with any fixed mode shows
UMASK = 0o027


@pytest.fixture
def umask():
    """The writing commands run (as subprocesses, which inherit it) under UMASK."""
    old = os.umask(UMASK)
    yield 0o666 & ~UMASK
    os.umask(old)


def file_modes(*paths):
    """{file: permission bits} of the files at or under ``paths``."""
    found = [p for p in paths if os.path.isfile(p)]
    found += [os.path.join(d, n) for p in paths if os.path.isdir(p) for d, _, names in os.walk(p) for n in names]
    return {path: oct(stat.S_IMODE(os.stat(path).st_mode)) for path in found}


def assert_umask(mode, *paths):
    modes = file_modes(*paths)
    assert modes and set(modes.values()) == {oct(mode)}, modes


def ok(proc):
    assert proc.returncode == 0, proc.stderr


def test_modes_render(tmp_path, umask):
    ok(cli("render", "--net", "model4", "--dim", "2", "--out", str(tmp_path / "one")))
    ok(cli("render", "--paper-grid", "--out", str(tmp_path / "grid")))
    assert_umask(umask, str(tmp_path))


def test_modes_upgrade(tmp_path, good_legacy, umask):
    ok(cli("upgrade", good_legacy, "-o", str(tmp_path / "new.prototxt")))
    assert_umask(umask, str(tmp_path))


def test_modes_data(tmp_path, umask):
    ok(cli("data", "--mnist-dir", VENDORED, "--out", str(tmp_path / "hdf5")))
    assert_umask(umask, str(tmp_path))


def test_modes_train_extract_report_bench(tmp_path, tiny, umask):
    require_torch()
    run = str(tmp_path / "runs" / "model2")
    ok(cli("train", "--backend", "torch", "--net", "model2", "--dim", "2", "--iters", "1", "--out", run, cwd=tiny))
    ok(cli("extract", run, "--split", "test", cwd=tiny))
    ok(cli("report", run, "--out", str(tmp_path / "report")))
    ok(cli("bench", "--backend", "torch", "--no-harness", "--nets", "model1", "--warmup", "0", "--repeats", "1",
           "--iters", "1", "--out", str(tmp_path / "bench.json")))
    assert_umask(umask, str(tmp_path))
