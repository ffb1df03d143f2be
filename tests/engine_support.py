"""Getting the Caffe engine in tests.

In CI (CI set) or with CAFFE_CAE_REQUIRE_ENGINE=1 a missing engine or PyTorch FAILS the
test; otherwise the test is skipped with the reason. The engine is built on first use only when required (CI runs
`make engine` first); set CAFFE_CAE_ENGINE to choose the kind.
"""
import json
import os
import subprocess
import sys

import pytest

from caffe_cae import REPO_ROOT
from caffe_cae.errors import CaeError

from conftest import REQUIRED, missing  # noqa: F401 (the fail-in-CI rule, re-exported)

SCRIPTS = os.path.join(REPO_ROOT, "tests", "engine_scripts")
_cache = {}


def require_torch():
    """The torch module, or skip (fail when REQUIRED)."""
    try:
        import torch
    except ImportError:
        missing("PyTorch is not installed (pip install -e '.[torch]')")
    return torch


def require_engine():
    if "engine" not in _cache:
        from caffe_cae.engine import get_engine
        try:
            _cache["engine"] = get_engine(build=REQUIRED)
        except CaeError as exc:
            _cache["engine"] = exc
    eng = _cache["engine"]
    if isinstance(eng, CaeError):
        missing(str(eng))
    return eng


def engine_json(eng, argv, cwd=None, timeout=900):
    """Run argv in the engine; the last stdout line parsed as JSON (CaeError with the stderr).
    No pytest needed: tools/gpu_check.py uses it too."""
    proc = eng.run(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                   universal_newlines=True, timeout=timeout)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise CaeError("%s exited %d:\n%s" % (" ".join(argv[:3]), proc.returncode, proc.stderr[-3000:]))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_json(eng, argv, cwd=None, timeout=900):
    """engine_json, failing the test with the stderr."""
    try:
        return engine_json(eng, argv, cwd=cwd, timeout=timeout)
    except CaeError as exc:
        pytest.fail(str(exc))


def cli(*args, cwd=None, env=None):
    """Run the caffe-cae CLI in a subprocess (host side)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["PYTHONPATH"] = REPO_ROOT + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "caffe_cae"] + list(args), cwd=cwd, env=full_env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
