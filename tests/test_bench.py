"""caffe-cae bench, cheaply: one net, one timed iteration, no harness steps; the JSON and the
table. (The full benchmark is `make bench`; timings are not asserted, only their presence.)

Engine test: skipped without an engine, FAIL under CAFFE_CAE_REQUIRE_ENGINE=1.
"""
import json

from engine_support import cli
from train_support import engine  # noqa: F401


def test_bench_one_net(engine, tmp_path):
    out = str(tmp_path / "bench" / "results.json")
    proc = cli("bench", "--nets", "deep_ae,model2", "--warmup", "0", "--repeats", "2", "--iters", "1",
               "--no-harness", "--out", out)
    assert proc.returncode == 0, proc.stderr
    with open(out) as f:
        results = json.load(f)
    assert sorted(results["nets"]) == ["deep_ae", "model2"]
    for net, r in results["nets"].items():
        assert r["ms"] > 0 and len(r["ms_all"]) == 2 and r["dim"] == 10 and r["batch"] == 100
    assert results["conditions"]["caffe_version"] and results["conditions"]["mode"] == "cpu"
    assert "| deep_ae |" in proc.stdout and "| model2 |" in proc.stdout and "ms per SGD iteration" in proc.stdout


def test_bench_rejects_unknown_net(tmp_path):
    proc = cli("bench", "--nets", "model9", "--out", str(tmp_path / "r.json"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "model9" in proc.stderr
