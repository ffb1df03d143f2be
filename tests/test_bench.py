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


def test_flops_counting_rule(tmp_path):
    """caffe_cae/flops.py on Model 4 at D = 10, against the rule counted by hand."""
    from caffe_cae import flops, render

    paths = render.write_files("model4", 10, str(tmp_path), "modern")
    counted = flops.iteration_flops(paths["train_test"], batch=100)
    by_name = {layer["name"]: layer for layer in counted["layers"]}
    conv1 = 2 * (26 * 1 * 5 * 5) * (24 * 24) * 100  # output positions; reads the data: no input gradient
    assert by_name["conv1"]["forward"] == conv1 and by_name["conv1"]["backward"] == conv1
    deconv1 = 2 * (36 * 26 * 5 * 5) * (8 * 8) * 100  # a deconvolution: input positions
    assert by_name["deconv1"]["forward"] == deconv1 and by_name["deconv1"]["backward"] == 2 * deconv1
    ip1 = 2 * (576 * 250) * 100
    assert by_name["ip1encode"]["forward"] == ip1 and by_name["ip1encode"]["backward"] == 2 * ip1
    assert set(by_name) == {"conv1", "conv2", "ip1encode", "ip2encode", "ip1decode", "deconv2", "deconv1",
                            "deconv1neur"}
    assert counted["total"] == sum(v["forward"] + v["backward"] for v in by_name.values())


def test_bench_torch_peak_and_peer(tmp_path):
    """The torch backend's bench: FLOPs, GFLOP/s, the GEMM peak, plain PyTorch and per-layer times."""
    out = str(tmp_path / "results.json")
    proc = cli("bench", "--backend", "torch", "--nets", "deep_ae,siamese", "--warmup", "0", "--repeats", "1",
               "--iters", "1", "--no-harness", "--layer-table", "deep_ae", "--out", out,
               env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    with open(out) as f:
        results = json.load(f)
    deep = results["nets"]["deep_ae"]
    assert deep["flops"] > 1e9 and deep["gflops"] > 0 and deep["peak_gflops"] > 0
    assert abs(deep["peak_percent"] - 100 * deep["gflops"] / deep["peak_gflops"]) < 1e-9
    assert deep["plain_ms"] > 0 and abs(deep["plain_ratio"] - deep["plain_ms"] / deep["ms"]) < 1e-9
    names = [layer["name"] for layer in deep["layers"]]
    assert "encode1" in names and all(layer["forward_ms"] >= 0 and layer["backward_ms"] >= 0
                                      for layer in deep["layers"])
    assert "plain_ms" not in results["nets"]["siamese"]  # no peer for the Siamese net
    assert "% of peak" in proc.stdout and "| encode1 | InnerProduct |" in proc.stdout


def test_levers_single_map_formulations_match_the_backend():
    """bench/levers.py: the batched GEMM forms of conv1 (1 -> 26 maps) and deconv1neur (26 -> 1
    map) that docs/benchmarks.md reports are bitwise the torch backend's forward passes."""
    import importlib.util
    import os

    import torch

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "levers.py")
    spec = importlib.util.spec_from_file_location("levers", path)
    levers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(levers)
    rows = levers.kernel_rows(torch, blocks=1, per=1)
    assert rows["conv1 forward (1 -> 26 maps)"]["batched GEMM"]["bitwise"]
    assert rows["deconv1neur forward (26 -> 1 map)"]["batched GEMM + fold"]["bitwise"]
    assert all(form["cpu_ms"] > 0 for layer in rows.values() for form in layer.values())
