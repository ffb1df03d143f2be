"""The Caffe engine: status, exec, and the Unpooling layer in real Caffe (pycaffe, tools, gtest).

Engine tests skip without an engine, and FAIL when CAFFE_CAE_REQUIRE_ENGINE=1 (CI).
"""
import json
import os
import subprocess

import pytest

from caffe_cae import REPO_ROOT, engine
from caffe_cae.errors import CaeError

from engine_support import SCRIPTS, cli, require_engine, run_json


@pytest.fixture(scope="module")
def eng():
    return require_engine()


@pytest.fixture(scope="module")
def unpool_report(eng, tmp_path_factory):
    work = str(tmp_path_factory.mktemp("unpool"))
    return run_json(eng, [eng.python, os.path.join(SCRIPTS, "unpool_check.py"), work], cwd=work)


def test_status_reports_caffe_with_unpooling(eng):
    info = eng.status()
    assert info["kind"] in ("host", "docker", "rootfs")
    assert info["unpooling"] is True
    assert info["caffe_version"] == "1.0.0"
    assert info["mode"] in ("cpu", "gpu")
    assert info["python"].startswith("3.")


def test_cli_status_json(eng):
    proc = cli("engine", "status", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["unpooling"] is True and info["kind"] == eng.kind


CASES = ["max_mask", "max_mask_odd", "max_nomask", "max_nomask_default_size", "ave", "ave_overlap_clipped",
         "tile", "tile_rect_overlap"]


@pytest.mark.parametrize("case", CASES)
def test_unpooling_matches_numpy_reference(unpool_report, case):
    r = unpool_report[case]
    assert r["shape"] == r["ref_shape"]
    assert r["forward"] < 1e-5, "forward differs from the NumPy reference by %g" % r["forward"]
    assert r["backward"] < 1e-5, "backward differs from the NumPy reference by %g" % r["backward"]
    assert r["nonzero"] > 0
    if "mask_diff" in r:
        assert r["mask_diff"] == 0, "the mask bottom must get no gradient"


def test_unpooling_output_sizes(unpool_report):
    assert unpool_report["max_mask"]["shape"] == [2, 3, 8, 8]
    # max((H-1)*s+k, H*s+1) with H=3, W=5, k=s=2
    assert unpool_report["max_nomask_default_size"]["shape"] == [1, 2, 7, 11]
    assert unpool_report["tile_rect_overlap"]["shape"] == [2, 2, 7, 3]


def test_model3_pool_unpool_puts_maxima_back(unpool_report):
    r = unpool_report["pool_unpool"]
    assert r["shape"] == [2, 4, 24, 24]
    assert r["kept"] == r["maxima"] == 2 * 4 * 12 * 12
    assert r["error"] == 0


def test_nonzero_pad_is_refused(eng, tmp_path):
    net = tmp_path / "pad.prototxt"
    net.write_text('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1 dim: 2 dim: 2 } } }\n'
                   'layer { name: "unpool1" type: "Unpooling" bottom: "x" top: "y" '
                   'unpooling_param { kernel_size: 2 stride: 2 pad: 1 } }\n')
    proc = eng.run([eng.python, "-c", "import caffe, sys; caffe.Net(sys.argv[1], caffe.TEST)", str(net)],
                   cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert proc.returncode != 0
    assert "Unpooling layer unpool1: pad 1x1 is not supported; only pad 0 is implemented" in proc.stderr


def test_upgrade_tool_knows_v1_unpooling(eng, tmp_path):
    (tmp_path / "v1.prototxt").write_text(
        'name: "t"\ninput: "x"\ninput_dim: 1 input_dim: 1 input_dim: 4 input_dim: 4\n'
        'layers { name: "pool" type: POOLING bottom: "x" top: "p" top: "m" '
        'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
        'layers { name: "unpool" type: UNPOOLING bottom: "p" bottom: "m" top: "y" '
        'unpooling_param { unpool: MAX kernel_size: 2 stride: 2 unpool_size: 4 } }\n')
    proc = eng.run(["upgrade_net_proto_text", "v1.prototxt", "modern.prototxt"], cwd=str(tmp_path),
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "modern.prototxt").read_text()
    assert 'type: "Unpooling"' in text and "unpool_size: 4" in text and "unpooling_param" in text
    # ... and the upgraded net runs.
    run_json(eng, [eng.python, "-c", "import caffe, json; n = caffe.Net('modern.prototxt', caffe.TEST); "
                   "n.forward(); print(json.dumps(list(n.blobs['y'].data.shape)))"], cwd=str(tmp_path))


def test_unpooling_gtest_passes(eng):
    """The Caffe-style gtest built with the engine (also run, and required, by the build)."""
    binary = "/usr/src/caffe-cae/build/test_unpooling_layer"
    proc = eng.run([binary], cwd="/tmp", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                   universal_newlines=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "[  PASSED  ]" in proc.stdout and "FAILED" not in proc.stdout


def test_exec_passes_status_cwd_and_paths(eng, tmp_path):
    (tmp_path / "here.txt").write_text("hello")
    proc = cli("engine", "exec", "--", "sh", "-c", "pwd; cat here.txt; test -f %s/setup.cfg; exit 7" % REPO_ROOT,
               cwd=str(tmp_path))
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout.split() == [str(tmp_path), "hello"]


def test_exec_environment(eng, tmp_path):
    out = run_json(eng, [eng.python, "-c", "import os, json, caffe_cae; print(json.dumps({k: os.environ.get(k) "
                         "for k in ('GLOG_minloglevel', 'OMP_NUM_THREADS', 'FOO')}))"],
                   cwd=str(tmp_path))
    assert out["GLOG_minloglevel"] == "2"
    assert out["OMP_NUM_THREADS"] == os.environ.get("OMP_NUM_THREADS")
    proc = eng.run(["sh", "-c", 'echo "$FOO"'], env={"FOO": "bar"}, stdout=subprocess.PIPE, universal_newlines=True)
    assert proc.stdout.strip() == "bar"


def test_exec_leaves_no_mounts(eng, tmp_path):
    with open("/proc/self/mountinfo") as f:
        before = f.read()
    assert eng.run(["true"], cwd=str(tmp_path)).returncode == 0
    with open("/proc/self/mountinfo") as f:
        assert f.read() == before


def test_unknown_engine_kind_is_one_line_error():
    proc = cli("engine", "status", env={"CAFFE_CAE_ENGINE": "bogus"})
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("caffe-cae: error: CAFFE_CAE_ENGINE=bogus: expected one of "
                                   "auto, host, docker, rootfs")
    with pytest.raises(CaeError):
        engine.get_engine("bogus")
