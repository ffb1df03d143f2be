"""caffe-cae analyze: each metric on synthetic codes with known answers, the figures and
analysis.json of a synthetic run directory through the real CLI, and the whole analysis of
a real short training run in the engine (model3, switches)."""
import io
import json
import os
import shutil

import h5py
import numpy as np
import pytest

from caffe_cae import REPO_ROOT
from caffe_cae import paper
from caffe_cae.analysis import analyze_run as run_lib
from caffe_cae.analysis import benchmark, figures, measure, netdraw, readers
from caffe_cae.errors import CaeError
from caffe_cae.schema import parse_net

from engine_support import cli, require_engine

GENERATED = os.path.join(REPO_ROOT, "generated")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def generated(syntax, net, dim, kind="train_test"):
    return os.path.join(GENERATED, syntax, "%s_d%d_%s.prototxt" % (net, dim, kind))


# ------------------------------------------------------------------ classification

def test_per_class_error_is_mean_of_one_minus_recall():
    labels = [0, 0, 0, 0, 1, 1, 2, 2]
    predicted = [0, 0, 0, 1, 1, 1, 0, 1]    # recalls 3/4, 1, 0
    error, per_class, confusion = measure.per_class_error(labels, predicted)
    assert per_class == {0: 25.0, 1: 0.0, 2: 100.0}
    assert error == pytest.approx(125.0 / 3)
    assert confusion == [[3, 1, 0], [0, 2, 0], [1, 1, 0]]


def test_separated_clusters_give_near_zero_error():
    code, labels = benchmark.synthetic_codes(2000, 10, seed=3, spread=1.0, separation=10.0)
    linear = measure.classify_cv(code, labels, "linear")
    mlp = measure.classify_cv(code, labels, "lbfgs", jobs=2)
    assert linear["error"] < 0.5 and mlp["error"] < 0.5
    assert mlp["hidden"] == 42
    assert set(linear["per_class"]) == {str(d) for d in range(10)}
    assert sum(map(sum, linear["confusion"])) == 2000


def test_random_code_gives_about_ninety_percent():
    rng = np.random.default_rng(7)
    code = rng.normal(size=(2000, 2)).astype(np.float32)
    labels = rng.permutation(np.arange(2000) % 10)
    assert 85.0 < measure.linear_error(code, labels) < 95.0
    assert 84.0 < measure.mlp_error(code, labels, classifier="lbfgs", jobs=2) < 96.0


def test_overlapping_clusters_are_between_and_mlp_beats_linear_on_nonlinear_classes():
    # two classes on rings: no line separates them, an MLP does
    rng = np.random.default_rng(1)
    n = 1000
    labels = np.arange(n) % 2
    angle = rng.uniform(0, 2 * np.pi, n)
    radius = np.where(labels == 0, 1.0, 3.0) + rng.normal(scale=0.2, size=n)
    code = np.column_stack([radius * np.cos(angle), radius * np.sin(angle)])
    linear = measure.linear_error(code, labels)
    assert linear > 30.0
    assert measure.mlp_error(code, labels, classifier="lbfgs") < 2.0
    assert measure.mlp_error(code, labels, mlp={"epochs": 300}) < 2.0


def test_mlp_sizes_follow_the_paper():
    assert [measure.mlp_hidden_size(d) for d in (2, 10, 30, 784)] == [14, 42, 66, 88]
    assert measure.mlp_hidden_size(20) == paper.mlp_hidden(20)
    h = measure.mlp_hidden_size(20)
    assert abs(9000 * 20 / ((20 + 1) * h + (h + 1) * 10) - 100) < 3  # |Data/(w+b)| about 100


def test_too_few_samples_per_class_is_a_clear_error():
    code, labels = benchmark.synthetic_codes(50, 2)
    with pytest.raises(CaeError, match="class .* has 5 samples; 10-fold"):
        measure.linear_error(code, labels)


def test_raw_pixel_reference_is_computed_once_then_cached(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 3
    images = np.clip(rng.normal(scale=0.1, size=(60, 784)) + (labels[:, None] == np.arange(784) % 3), 0, 1)
    cache = str(tmp_path / "ref.json")
    short = {"epochs": 100}
    assert measure.raw_pixel_reference(images, labels, cache=cache, folds=3, compute=False, mlp=short) is None
    first = measure.raw_pixel_reference(images, labels, cache=cache, folds=3, mlp=short)
    assert first["cached"] is False and first["size"] == "784-88-10" and first["error"] < 5.0
    assert first["classifier"]["name"] == "patternnet" and len(first["folds"]) == 3
    second = measure.raw_pixel_reference(images, labels, cache=cache, folds=3, compute=False, mlp=short)
    assert second["cached"] is True and second["error"] == first["error"]
    assert measure.raw_pixel_reference(images[::-1], labels[::-1], cache=cache, folds=3, compute=False,
                                       mlp=short) is None
    # another activation or classifier is another row
    assert measure.raw_pixel_reference(images, labels, cache=cache, folds=3, compute=False,
                                   mlp=dict(short, hidden_transfer="logsig")) is None
    assert measure.raw_pixel_reference(images, labels, cache=cache, folds=3, compute=False, classifier="lbfgs") is None


# ------------------------------------------------------------------ sparsity, compression

def test_sparsity_counts_magnitudes_at_most_a_share_of_the_largest():
    code = np.array([[-1.0, 0.0, 1.0, 2.0], [3.0, 4.0, 5.0, 10.0]])
    # eq. (2): |c| <= 1, 2, 3 (10/20/30 % of the largest element, 10)
    assert measure.sparsity(code) == {"10": 37.5, "20": 50.0, "30": 62.5}
    assert measure.sparsity(np.ones((3, 2))) == {"10": 0.0, "20": 0.0, "30": 0.0}
    signed = np.array([-20.0, -2.0, 1.0, 10.0])
    assert measure.sparsity(signed) == {"10": 25.0, "20": 50.0, "30": 50.0}          # base: max c = 10
    assert measure.sparsity(signed, base="absmax") == {"10": 50.0, "20": 50.0, "30": 50.0}   # base: max |c| = 20
    assert measure.sparsity_readings(signed) == {"signed_below_max": 75.0, "abs_le_max": 50.0, "abs_le_absmax": 50.0}
    with pytest.raises(CaeError, match="--sparsity-base: expected one of max, absmax"):
        measure.sparsity(signed, base="mean")


def test_compression_of_codes_is_the_papers():
    expected = paper.load()["compression"]["others_ratio_percent"]
    for dim in (2, 10, 30):
        out = measure.compression(dim)
        assert out["total_bytes"] == 4 * dim and out["image_bytes"] == 784
        assert round(out["ratio_percent"]) == expected[str(dim)]


@pytest.mark.parametrize("syntax", ["modern", "legacy"])
def test_model3_switches_from_its_prototxt_give_the_papers_bytes(syntax):
    m3 = paper.load()["compression"]["model3"]
    totals = []
    for dim in (2, 10, 30):
        switches = measure.net_switches(generated(syntax, "model3", dim))
        assert sorted((s["count"], s["positions"], s["bits"]) for s in switches.values()) == \
            [(576, 64, 6), (3744, 576, 9)]
        totals.append(measure.compression(dim, switches)["total_bytes"])
    assert totals == [4652, 4684, 4764] and [totals[0], totals[-1]] == [m3["min_bytes"], m3["max_bytes"]]
    assert abs(measure.compression(2, switches)["ratio_percent"] - m3["ratio_percent"]) < 5   # -493 vs printed -490
    for net in ("model2", "model4", "model5", "deep_ae", "siamese"):
        assert measure.net_switches(generated(syntax, net, 10)) == {}


# ------------------------------------------------------------------ figures

@pytest.mark.parametrize("syntax", ["modern", "legacy"])
def test_net_diagram_has_every_layer_and_renders(tmp_path, syntax):
    path = generated(syntax, "model3", 2)
    text = netdraw.net_dot(parse_net(path))
    for name in ("conv1", "pool1", "unpool1", "ip2encode", "deconv1neursig", "loss"):
        assert name in text
    assert "Unpooling" in text and "pool1_mask" in text
    assert '"B:conv1:1"' in text    # conv1 rewritten in place by sig1en: a second octagon
    names = netdraw.draw_net(path, str(tmp_path))
    assert names == ["net.dot", "net.png", "net.svg"]
    assert (tmp_path / "net.png").read_bytes()[:8] == PNG_MAGIC
    assert "<svg" in (tmp_path / "net.svg").read_text()


@pytest.mark.parametrize("net", ["siamese", "deep_ae", "model1", "model2", "model4", "model5"])
def test_net_diagram_of_every_net_has_each_train_layer_once(net):
    from caffe_cae.proto import caffe_cae_pb2 as pb
    for syntax in ("modern", "legacy"):
        parsed = parse_net(generated(syntax, net, 10))
        layers = list(parsed.layer) or list(parsed.layers)
        train = [layer for layer in layers if not len(layer.include) or any(r.phase == pb.TRAIN for r in layer.include)]
        assert len(train) < len(layers)             # the TEST-stage data layers are left out
        text = netdraw.net_dot(parsed)
        assert text.count("shape=box") == len(train), syntax
        for layer in train:
            assert 'label="%s\\n' % layer.name in text, (syntax, layer.name)


def test_blob_titles_follow_fig11():
    step = {"blob": "conv1", "layer": "sig1en", "data": np.linspace(0.1, 0.9, 26 * 24 * 24).reshape(1, 26, 24, 24)}
    assert figures.panel_title(step) == "conv1|sig1en 24x24x26 [0.1..0.9]"
    assert figures.blob_size((1, 250)) == ("1x1x250", False)
    assert figures.blob_size((1, 250, 1, 1)) == ("1x1x250", False)   # legacy 4-D fully-connected blob


def test_filters_of_a_fully_connected_first_layer(tmp_path):
    weights = np.random.default_rng(0).normal(size=(1000, 784))
    names = figures.save_figure(figures.fig_filters("encode1", weights, "deep_ae"), str(tmp_path), "filters")
    assert (tmp_path / names[0]).stat().st_size > 1000
    with pytest.raises(CaeError, match="params/ip/0"):
        figures.fig_filters("ip", np.zeros((3, 5)), "x")


# ------------------------------------------------------------------ a synthetic run through the CLI

STEPS = [("input", "Input", "data", (1, 1, 28, 28)), ("conv1", "Convolution", "conv1", (1, 26, 24, 24)),
         ("sig1en", "Sigmoid", "conv1", (1, 26, 24, 24)), ("pool1", "Pooling", "pool1", (1, 26, 12, 12)),
         ("pool1", "Pooling", "pool1_mask", (1, 26, 12, 12)), ("ip1encode", "InnerProduct", "ip1encode", (1, 250)),
         ("ip2encode", "InnerProduct", "ip2encode", (1, 10)), ("reshape", "Reshape", "ip1decodesh", (1, 250, 1, 1)),
         ("deconv1neursig", "Sigmoid", "deconv1neursig", (1, 1, 28, 28))]


def make_run(root, n=300, dim=10, net="model3", log=True):
    """A run directory in the formats of train/extract, with separable synthetic codes."""
    rng = np.random.default_rng(0)
    run = os.path.join(root, "run")
    os.makedirs(run)
    code, labels = benchmark.synthetic_codes(n, dim, seed=1, separation=10.0)
    images = rng.random((n, 1, 28, 28), dtype=np.float32)
    test_h5 = os.path.join(root, "test.h5")
    with h5py.File(test_h5, "w") as f:
        f["data"], f["label"] = images, labels.astype(np.float32)
    with h5py.File(os.path.join(run, "codes.h5"), "w") as f:
        f["code"], f["label"] = code, labels.astype(np.float32)
        f["reconstruction"] = images[:, 0] * 0.5
        f.attrs["loss_cross_entropy"], f.attrs["loss_euclidean"] = 80.0, 5.0
    with h5py.File(os.path.join(run, "blobs_digit5.h5"), "w") as f:
        for i, (layer, kind, blob, shape) in enumerate(STEPS):
            ds = f.create_dataset("blobs/%02d_%s" % (i, layer), data=rng.random(shape, dtype=np.float32))
            ds.attrs["blob"], ds.attrs["layer"], ds.attrs["layer_type"] = blob, layer, kind
        f["params/conv1/0"] = rng.normal(size=(26, 1, 5, 5)).astype(np.float32)
        f["params/conv1/1"] = np.zeros(26, np.float32)
        f["input"] = images[:1]
        f.attrs["label"] = 5
    if log:
        with open(os.path.join(run, "log.jsonl"), "w") as f:
            for it in range(100, 600, 100):
                f.write(json.dumps({"iter": it, "phase": "train",
                                    "loss": {"cross_entropy": 500.0 / it, "euclidean": 50.0 / it}}) + "\n")
            f.write(json.dumps({"iter": 500, "phase": "test-on-test", "loss": {"cross_entropy": 1.2, "euclidean": 0.2}})
                    + "\n")
    proto = generated("modern", net, dim)
    shutil.copy(proto, run)
    with open(os.path.join(run, "manifest.json"), "w") as f:
        json.dump({"net": net, "dim": dim, "syntax": "modern", "seed": 1, "iterations": 500,
                   "files": {"train_test": os.path.basename(proto)},
                   "data": {"test": {"images": test_h5}}}, f)
    return run, test_h5


FIGURES = ["code_map", "reconstructions", "reconstruction_grid", "blobs_digit5", "filters", "learning_curves", "net"]


def test_cli_writes_analysis_and_every_figure(tmp_path):
    run, _ = make_run(str(tmp_path))
    proc = cli("analyze", run, "--mlp-epochs", "200", "--reference-cache", str(tmp_path / "none.json"))
    assert proc.returncode == 0, proc.stderr
    assert "analysis.json: model3 D=10 linear 0.00 (paper 13.75)" in proc.stdout
    with open(os.path.join(run, "analysis.json")) as f:
        out = json.load(f)
    assert out["net"] == "model3" and out["dim"] == 10 and out["n"] == 300
    assert out["linear_error"] < 1 and out["mlp_error"] < 1 and out["mlp_size"] == "10-42-10"
    assert set(out["per_class_error"]["mlp"]) == {str(d) for d in range(10)}
    assert set(out["sparsity"]) == {"10", "20", "30"} and out["sparsity_base"] == "max"
    assert out["classifier"]["mlp"]["name"] == "patternnet"
    assert out["classifier"]["mlp"]["settings"]["epochs"] == 200
    assert out["classifier"]["mlp"]["settings"]["hidden_transfer"] == "tansig"
    assert [f["fold"] for f in out["mlp_folds"]] == list(range(10))
    assert all(0 <= f["best_epoch"] <= f["epochs"] <= 200 for f in out["mlp_folds"])
    assert out["compression"]["total_bytes"] == 4684
    assert out["paper"]["linear_error"] == 13.75 and out["paper"]["mlp_error"] == 8.75
    assert out["paper"]["sparsity"] == {"30": 67.4} and out["paper"]["compression"]["ratio_percent"] == -490
    assert out["code_map"]["method"] == "t-SNE" and out["reference"] is None
    assert out["losses"] == {"cross_entropy": 80.0, "euclidean": 5.0}
    assert out["figures_skipped"] == {}
    assert {"linear", "mlp", "embedding", "figures", "total"} <= set(out["timings"])
    assert sorted(out["figures"]) == sorted("figures/%s.%s" % (s, e) for s in FIGURES for e in ("png", "svg"))
    for rel in out["figures"]:
        data = open(os.path.join(run, rel), "rb").read()
        assert data[:8] == PNG_MAGIC if rel.endswith(".png") else b"<svg" in data[:2000]
        assert len(data) > 2000, rel
    assert not [n for n in os.listdir(os.path.join(run, "figures")) if n.startswith(".tmp-")]


def test_analysis_of_a_run_without_log_or_reconstructions(tmp_path):
    run, _ = make_run(str(tmp_path), n=200, dim=2, net="model4", log=False)
    with h5py.File(os.path.join(run, "codes.h5"), "a") as f:
        del f["reconstruction"]
    out = run_lib.analyze_run(run, folds=5, diagram=False, reference_cache=None, mlp={"epochs": 50})
    assert out["code_map"]["method"] == "code" and out["compression"]["total_bytes"] == 8
    assert set(out["figures_skipped"]) == {"reconstructions", "learning_curves", "net"}
    assert "figures/code_map.png" in out["figures"] and "figures/net.png" not in out["figures"]


@pytest.mark.parametrize("damage, message", [
    ("no_codes", "codes.h5: not found; run `caffe-cae extract"),
    ("bad_manifest", "manifest.json: not readable JSON"),
    ("wrong_dim", "code has 10 columns, manifest says dim 30"),
    ("bad_log", "log.jsonl:2: not a JSON line"),
    ("other_images", "labels differ from codes.h5's"),
    ("dead_unit", "MATLAB classify() refuses this code: pooled within-class covariance is singular: "
                  "code dimension(s) 3 constant within every class"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, damage, message):
    run, test_h5 = make_run(str(tmp_path), n=200)
    if damage == "no_codes":
        os.unlink(os.path.join(run, "codes.h5"))
    elif damage == "bad_manifest":
        open(os.path.join(run, "manifest.json"), "w").write("{not json")
    elif damage == "wrong_dim":
        manifest = json.load(open(os.path.join(run, "manifest.json")))
        manifest["dim"] = 30
        json.dump(manifest, open(os.path.join(run, "manifest.json"), "w"))
    elif damage == "bad_log":
        open(os.path.join(run, "log.jsonl"), "w").write('{"iter": 1, "loss": {"a": 1}}\n{oops\n')
    elif damage == "other_images":
        with h5py.File(test_h5, "a") as f:
            f["label"][...] = f["label"][...][::-1]
    elif damage == "dead_unit":
        with h5py.File(os.path.join(run, "codes.h5"), "a") as f:
            f["code"][:, 3] = 0.5
    proc = cli("analyze", "--folds", "5", run)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not os.path.exists(os.path.join(run, "analysis.json"))


def test_missing_run_dir_is_one_line(tmp_path):
    proc = cli("analyze", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "no such run directory" in proc.stderr and proc.stderr.count("\n") == 1


# ------------------------------------------------------------------ a real short run

def test_real_short_run_is_analysed(tmp_path):
    """model3 at D=2, 30 iterations on tiny MNIST in the real engine, extracted, analysed."""
    require_engine()
    from caffe_cae import data
    from caffe_cae import extract as extract_lib
    from caffe_cae import train as train_lib

    root = str(tmp_path)
    data.write_tiny(os.path.join(root, "data", "hdf5"), n=250, n_test=300, list_prefix="data/hdf5")
    run = os.path.join(root, "run")
    train_lib.train(out=run, data_root=root, stream=io.StringIO(), tty=False, handle_signals=False,
                    net="model3", dim=2, iters=30, seed=1,
                    overrides={"solver.display": 10, "solver.test_interval": 15, "solver.snapshot": 30})
    extract_lib.extract(run, stream=io.StringIO())
    proc = cli("analyze", "--folds", "5", "--mlp-epochs", "100", run, "--reference-cache", str(tmp_path / "none.json"))
    assert proc.returncode == 0, proc.stderr
    out = json.load(open(os.path.join(run, "analysis.json")))
    assert out["n"] == 300 and out["iterations"] == 30
    assert 0 <= out["linear_error"] <= 100 and 0 <= out["mlp_error"] <= 100
    assert out["compression"]["total_bytes"] == 4652 and out["figures_skipped"] == {}
    assert len(out["figures"]) == 2 * len(FIGURES)
    steps, params, _, _ = readers.read_blobs(os.path.join(run, "blobs_digit5.h5"))
    assert [s["blob"] for s in steps][:3] == ["data", "conv1", "conv1"] and "conv1" in params
    for rel in out["figures"]:
        assert os.path.getsize(os.path.join(run, rel)) > 2000, rel


def test_benchmark_entry_runs_on_a_small_code():
    """The `caffe-cae bench` entry (timings only; the 10000 x 30 figure is a benchmark, not a test)."""
    out = benchmark.benchmark(n=500, dim=2, jobs=1, mlp={"epochs": 50})
    assert out["n"] == 500 and out["dim"] == 2 and out["wall_seconds"] > 0
    assert {"linear", "mlp", "embedding", "figures", "total"} <= set(out["stages"])
    assert out["code"].startswith("PCA-2") and 0 <= out["linear_error"] < 80


@pytest.mark.parametrize("dim", [2, 30])
def test_benchmark_blobs_follow_the_rendered_net(dim):
    """The benchmark's Fig. 11 blobs take Model 4's shapes at the given D from its deploy net."""
    from caffe_cae.render import render_files
    steps, params = benchmark.forward_steps(render_files("model4", dim)["deploy"])
    assert steps[0] == ("input", "Input", "data", (1, 1, 28, 28))
    assert ("ip2encode", "InnerProduct", "ip2encode", (1, dim)) in steps
    assert ("pool2", "Pooling", "pool2", (1, 36, 4, 4)) in steps
    assert ("unpool1", "Unpooling", "unpool1", (1, 26, 24, 24)) in steps
    assert steps[-1] == ("deconv1neursig", "Sigmoid", "deconv1neursig", (1, 1, 28, 28)) and len(steps) == 21
    assert params == {"conv1": (26, 1, 5, 5)}


def run_with_train_codes(root):
    """make_run's directory plus codes_train.h5 (400 separable codes), as `extract --split train` writes."""
    run, _ = make_run(root, n=200)
    code, labels = benchmark.synthetic_codes(400, 10, seed=5, separation=10.0)
    with h5py.File(os.path.join(run, "codes_train.h5"), "w") as f:
        f["code"], f["label"] = code, labels.astype(np.float32)
    return run


def test_train_split_codes_give_their_own_errors(tmp_path):
    run = run_with_train_codes(str(tmp_path))
    proc = cli("analyze", "--split", "train", "--folds", "4", "--mlp-epochs", "30", run)
    assert proc.returncode == 0, proc.stderr
    out = json.load(open(os.path.join(run, "analysis_train.json")))
    assert out["split"] == "train" and out["n"] == 400 and out["linear_error"] < 1 and len(out["mlp_folds"]) == 4
    assert not os.path.exists(os.path.join(run, "analysis.json"))
    os.unlink(os.path.join(run, "codes_train.h5"))
    proc = cli("analyze", "--split", "train", run)
    assert proc.returncode == 2 and "extract --split train" in proc.stderr and proc.stderr.count("\n") == 1


def test_linear_only_on_the_training_codes(tmp_path):
    run = run_with_train_codes(str(tmp_path))
    proc = cli("analyze", "--split", "train", "--mlp", "none", "--folds", "4", run)
    assert proc.returncode == 0 and "MLP -" in proc.stdout, proc.stderr
    assert json.load(open(os.path.join(run, "analysis_train.json")))["mlp_error"] is None
    proc = cli("analyze", "--mlp", "none", run)
    assert proc.returncode == 2 and "--mlp none: only with --split train" in proc.stderr
