"""The wheel works anywhere: `python -m build`, the wheel installed (not editable) into a fresh venv
outside the checkout, and from a directory outside the checkout `caffe-cae render`, `inspect`,
`upgrade`, `data --mnist-dir`, `engine build` (a cache hit: the recipe, read from the package data,
hashes as in the checkout) and `engine status`.

The wheel is built from a copy of the working tree's files (tracked and untracked, not ignored),
as from a fresh clone: no egg-info or build/ left in the checkout counts. The venv has no pip of
its own (this interpreter's pip installs into it with --python, no byte-compiling: about 20 s
less); its dependencies come from the configured package index. The engine tests need the
rootfs engine cached (CI runs `make engine` first); they skip without it, and fail in CI.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

from caffe_cae import REPO_ROOT, engine

from conftest import missing

MNIST = os.environ.get("MNIST_DIR") or os.path.join(REPO_ROOT, "data", "mnist")  # as tests/test_data.py


def _run(argv, cwd, timeout=300, env=None):
    full = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing from the checkout
    full.update(env or {})
    return subprocess.run(argv, cwd=cwd, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=timeout)


def _ok(proc):
    assert proc.returncode == 0, "%s\n%s\n%s" % (proc.args, proc.stdout, proc.stderr)
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """{"python", "cae", "work"}: the venv with the wheel, and an empty directory outside the checkout."""
    pytest.importorskip("build", reason="the build package (the test extra) is not installed")
    root = tmp_path_factory.mktemp("wheel")
    src, dist, venv, work = (str(root / n) for n in ("src", "dist", "venv", "work"))
    files = _ok(_run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                     cwd=REPO_ROOT)).stdout.split("\0")
    for rel in filter(None, files):
        path = os.path.join(REPO_ROOT, rel)
        if not os.path.lexists(path):
            continue  # deleted in the work tree
        os.makedirs(os.path.dirname(os.path.join(src, rel)), exist_ok=True)
        shutil.copy2(path, os.path.join(src, rel), follow_symlinks=False)
    _ok(_run([sys.executable, "-m", "build", "--outdir", dist, src], cwd=str(root), timeout=600))
    wheels = [n for n in os.listdir(dist) if n.endswith(".whl")]
    assert len(wheels) == 1, wheels
    _ok(_run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=str(root)))
    python = os.path.join(venv, "bin", "python")
    _ok(_run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-compile",
              os.path.join(dist, wheels[0])], cwd=str(root), timeout=900))
    os.makedirs(work)
    return {"python": python, "cae": os.path.join(venv, "bin", "caffe-cae"), "work": work, "venv": venv}


def test_wheel_is_installed_with_its_package_data(installed):
    code = ("import json, os, caffe_cae; from caffe_cae import engine; d = caffe_cae.PACKAGE_DIR; "
            "print(json.dumps({'dir': d, 'repo': caffe_cae.REPO_ROOT, 'hash': engine.recipe_hash(), "
            "'files': sorted(os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs "
            "if not f.endswith(('.py', '.pyc')))}))")
    info = json.loads(_ok(_run([installed["python"], "-c", code], cwd=installed["work"])).stdout)
    assert info["dir"].startswith(installed["venv"] + os.sep) and "site-packages" in info["dir"]
    assert info["repo"] is None
    assert not any(os.path.islink(os.path.join(info["dir"], n)) for n in ("templates", "docker"))
    for rel in ("templates/modern.prototxt.j2", "templates/legacy.prototxt.j2", "templates/solver.prototxt.j2",
                "proto/caffe_cae.proto", "paper.json", "docker/build-caffe.sh", "docker/unpooling/unpooling_layer.cu"):
        assert rel in info["files"], rel
    assert info["hash"] == engine.recipe_hash()  # the same recipe, so the same cached engine


def test_render_inspect_upgrade_outside_the_checkout(installed, tmp_path):
    work, cae = installed["work"], installed["cae"]
    _ok(_run([cae, "render", "--net", "model4", "--dim", "2", "--out", "nets"], cwd=work))
    _ok(_run([cae, "render", "--net", "model4", "--dim", "2", "--syntax", "legacy", "--out", "legacy"], cwd=work))
    _ok(_run([sys.executable, "-m", "caffe_cae", "render", "--net", "model4", "--dim", "2", "--out", "nets"],
             cwd=str(tmp_path), env={"PYTHONPATH": REPO_ROOT}))  # the checkout's package: the same bytes
    for kind in ("train_test", "deploy", "solver"):
        name = "model4_d2_%s.prototxt" % kind
        with open(os.path.join(work, "nets", name)) as a, open(os.path.join(str(tmp_path), "nets", name)) as b:
            assert a.read() == b.read(), name
    out = _ok(_run([cae, "inspect", "nets/model4_d2_train_test.prototxt"], cwd=work)).stdout
    assert "ip2encode" in out and "Unpooling" in out
    _ok(_run([cae, "upgrade", "legacy/model4_d2_train_test.prototxt", "-o", "upgraded.prototxt"], cwd=work))
    with open(os.path.join(work, "upgraded.prototxt")) as f:
        assert 'type: "Unpooling"' in f.read()


def test_data_outside_the_checkout(installed):
    proc = _ok(_run([installed["cae"], "data", "--mnist-dir", MNIST, "--out", "data/hdf5"], cwd=installed["work"]))
    listed = dict(line.split("\t") for line in proc.stdout.strip().splitlines())
    assert listed["train_list"] == "data/hdf5/train.txt"
    for key in ("train", "test", "train_pairs", "test_pairs"):
        assert os.path.isfile(os.path.join(installed["work"], listed[key])), key


def test_engine_build_and_status_find_the_cached_engine(installed):
    cached = engine.find_rootfs()
    if cached is None:
        message = "no cached rootfs engine for recipe %s (make engine)" % engine.recipe_hash()
        missing(message)
    work, cae, env = installed["work"], installed["cae"], {"CAFFE_CAE_ENGINE": "rootfs"}
    proc = _ok(_run([cae, "engine", "build"], cwd=work, timeout=120, env=env))
    assert proc.stdout == "rootfs engine: %s\n" % cached.location  # what a cache hit prints, and only that
    assert "[engine]" not in proc.stderr
    info = json.loads(_ok(_run([cae, "engine", "status", "--json", "--no-build"], cwd=work, timeout=300,
                               env=env)).stdout)
    assert (info["kind"], info["location"], info["recipe"]) == ("rootfs", cached.location, engine.recipe_hash())
    assert info["unpooling"] is True and info["caffe_version"] == "1.0.0"
    # Inside the engine the installed package is importable, and the venv's numpy does not shadow Debian's.
    code = "import caffe, caffe_cae, numpy; print(caffe_cae.__file__); print(numpy.__file__)"
    out = _ok(_run([cae, "engine", "exec", "--", "python3", "-c", code], cwd=work, timeout=300, env=env)).stdout
    assert out.splitlines() == [engine.PACKAGE_PARENT_IN_ENGINE + "/caffe_cae/__init__.py",
                                "/usr/lib/python3/dist-packages/numpy/__init__.py"]
