"""make deps (deps/install.sh): the one list of system packages, installed with apt-get as root on
Debian/Ubuntu, else one line naming what is missing (exit 2). Real runs of the script: as an
unprivileged user (setpriv), with a PATH without dpkg-query, and as root with a stand-in apt-get
on PATH that only records that it was called."""
import os
import re
import shutil
import subprocess

from caffe_cae import REPO_ROOT

from conftest import missing

SCRIPT = os.path.join(REPO_ROOT, "deps", "install.sh")
LIST = os.path.join(REPO_ROOT, "deps", "debian-packages.txt")
MISSING = "caffe-cae-no-such-package"
#: dpkg is Essential on Debian and Ubuntu: always installed where dpkg-query is.
LIST_INSTALLED = "# comment\n\ndpkg   dpkg-query   # why\n"
LIST_ONE_MISSING = LIST_INSTALLED + MISSING + " caffe-cae-no-such-program\npython3-venv -\n"


def _deps(list_text, env=None, user=None, path=None):
    """sh deps/install.sh - with ``list_text`` on stdin; ``user`` a uid to run as."""
    argv = ["/bin/sh", SCRIPT, "-"]
    if user is not None:
        argv = [shutil.which("setpriv"), "--reuid=%d" % user, "--regid=%d" % user, "--clear-groups"] + argv
    full = dict(os.environ, **(env or {}))
    if path is not None:
        full["PATH"] = path
    return subprocess.run(argv, input=list_text, env=full, cwd="/", stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=60)


def _lines(proc):
    return proc.stdout.strip().splitlines()


def _unavailable(why):
    """Skip where the machine cannot run this check; in CI (Debian, root) that is a failure."""
    missing(why)


def _need_dpkg():
    if shutil.which("dpkg-query") is None:
        _unavailable("not Debian/Ubuntu (no dpkg-query)")


def _root_apt_get(tmp_path, list_text):
    """Run the check as root with a recording apt-get; (process, record file)."""
    _need_dpkg()
    if os.geteuid() != 0:
        _unavailable("needs root")
    bindir, record = _recording_apt_get(tmp_path)
    return _deps(list_text, path=bindir + os.pathsep + os.environ["PATH"]), record


def _recording_apt_get(tmp_path):
    """A directory with an apt-get that records its arguments (the install it stands in for is
    the system's, not this test's business) and the file it records to."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "apt-get.calls"
    stub = bindir / "apt-get"
    stub.write_text('#!/bin/sh\necho "$*" >> "%s"\n' % record)
    stub.chmod(0o755)
    return str(bindir), record


def test_not_root_prints_one_line_and_exits_2():
    _need_dpkg()
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            _unavailable("running as root and no setpriv(1) to drop to an unprivileged user")
        proc = _deps(LIST_ONE_MISSING, user=65534)
    else:
        proc = _deps(LIST_ONE_MISSING)
    assert proc.returncode == 2, proc.stdout
    assert _lines(proc) == ["caffe-cae deps: missing system packages: %s; install them with: "
                            "sudo apt-get install -y %s" % (MISSING, MISSING)]


def test_without_dpkg_prints_one_line_and_exits_2(tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    proc = _deps(LIST_ONE_MISSING, path=str(empty))  # no dpkg-query, no apt-get, no id: not Debian
    assert proc.returncode == 2, proc.stdout
    lines = _lines(proc)
    assert len(lines) == 1 and lines[0].startswith("caffe-cae deps: not Debian/Ubuntu (no dpkg-query)")
    assert "dpkg(dpkg-query) %s(caffe-cae-no-such-program);" % MISSING in lines[0]
    assert lines[0].endswith("sudo apt-get install -y dpkg %s)" % MISSING)  # python3-venv: no program to check
    # Present programs count as installed there: sh stands for a package's program.
    os.symlink("/bin/sh", str(empty / "sh"))
    proc = _deps("some-shell sh\npython3-venv -\n", path=str(empty))
    assert (proc.returncode, proc.stdout) == (0, "")


def test_root_with_nothing_missing_exits_0_without_apt_get(tmp_path):
    proc, record = _root_apt_get(tmp_path, LIST_INSTALLED)
    assert (proc.returncode, proc.stdout) == (0, "")
    assert not record.exists()


def test_root_installs_only_what_is_missing(tmp_path):
    proc, record = _root_apt_get(tmp_path, LIST_ONE_MISSING)
    assert proc.returncode == 0, proc.stdout
    assert _lines(proc) == ["caffe-cae deps: apt-get install " + MISSING]
    assert record.read_text().splitlines() == ["update -qq", "install -y -qq " + MISSING]


def test_the_one_list_is_used_everywhere():
    with open(LIST, encoding="utf-8") as f:
        rows = [line.split("#", 1)[0].split() for line in f]
    rows = [r for r in rows if r]
    assert all(len(r) == 2 and re.fullmatch(r"[a-z0-9][a-z0-9.+-]+", r[0]) for r in rows), rows
    packages = [r[0] for r in rows]
    for pkg in ("debootstrap", "bubblewrap", "graphviz", "shellcheck", "chromium", "slurm-wlm", "munge",
                "python3-venv", "podman", "runc", "docker.io"):
        assert pkg in packages
    with open(os.path.join(REPO_ROOT, ".ci", "run"), encoding="utf-8") as f:
        ci = f.read()
    assert "make deps" in ci and "apt-get" not in ci
    with open(os.path.join(REPO_ROOT, "Makefile"), encoding="utf-8") as f:
        make = f.read()
    # (in the caffe-cae image, CAFFE_CAE_IMAGE set, the image's system is used as it is)
    assert re.search(r"^deps:\n\t@\$\(if \$\(CAFFE_CAE_IMAGE\),:,sh deps/install.sh\)$", make, re.M)
    for target in ("reproduce-quick", "test", "engine", "engine-gpu", "docker", "docker-gpu"):
        assert re.search(r"^%s: deps " % target, make, re.M), target
    if shutil.which("shellcheck"):
        lint = subprocess.run(["shellcheck", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True)
        assert lint.returncode == 0, lint.stdout
