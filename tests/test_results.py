"""caffe-cae results: the publication order, publishing a run's small files, the claims, the
README's generated Table 4 section (and that the committed one is what results/ gives), and
a real two-run `results` in the torch backend, interrupted and resumed."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from caffe_cae import REPO_ROOT, data
from caffe_cae import results as lib
from caffe_cae.errors import CaeError

from test_report import _fake_run


def test_plan_runs_the_eight_claim_runs_first_then_seed_1_then_seeds_2_and_3():
    plan = lib.plan()
    assert len(plan) == len(set(plan)) == 63
    assert plan[:8] == [(n, d, 1) for n, d in (("model4", 30), ("model3", 30), ("deep_ae", 30), ("model5", 10),
                                               ("model4", 10), ("model3", 10), ("model1", 30), ("model2", 30))]
    assert {s for _, _, s in plan[:21]} == {1} and {s for _, _, s in plan[21:42]} == {2}
    assert {(n, d) for n, d, _ in plan[:21]} == {(n, d) for n, d, _ in plan[42:]}
    assert ("siamese", 20, 1) in plan[:21] and ("siamese", 30, 1) not in plan


def fake_analysed(root, net, dim, seed, linear=5.0, mlp=3.0, loss=80.0):
    run = _fake_run(root, net, dim, seed, iterations=50000)
    with h5py.File(os.path.join(run, "codes.h5"), "w") as f:
        f["code"] = np.random.default_rng(seed).normal(size=(10000, dim)).astype(np.float32)
        f["label"] = (np.arange(10000) % 10).astype(np.float32)
        f["reconstruction"] = np.zeros((10000, 28, 28), np.float32)
        f.attrs["extract_backend"] = "torch"
    analysis = json.load(open(os.path.join(run, "analysis.json")))
    analysis.update(linear_error=linear, mlp_error=mlp, n=10000)
    json.dump(analysis, open(os.path.join(run, "analysis.json"), "w"))
    lines = [{"iter": 50000, "phase": p, "loss": {"cross_entropy": loss, "euclidean": loss / 10}}
             for p in ("test-on-train", "test-on-test")]
    open(os.path.join(run, "log.jsonl"), "w").write("".join(json.dumps(x) + "\n" for x in lines))
    shutil.copy(os.path.join(run, "figures", "map.png"), os.path.join(run, "figures", "code_map.png"))
    os.makedirs(os.path.join(run, "snapshots"))
    open(os.path.join(run, "snapshots", "big.caffemodel"), "wb").write(b"x" * 100000)
    return run


def test_publish_copies_small_files_and_reduces_the_codes(tmp_path):
    run = fake_analysed(tmp_path / "runs", "model4", 30, 1)
    dest = str(tmp_path / "results" / "model4_d30" / "run1")
    lib.publish(run, dest)
    assert sorted(os.listdir(dest)) == ["analysis.json", "codes.h5", "figures", "log.jsonl", "manifest.json"]
    assert os.listdir(os.path.join(dest, "figures")) == ["code_map.png"]          # not every figure
    with h5py.File(os.path.join(dest, "codes.h5")) as f:
        assert sorted(f) == ["code", "label"] and f["code"].shape == (10000, 30)
        assert f["code"].compression == "gzip" and f.attrs["extract_backend"] == "torch"
        assert np.array_equal(f["label"][...], np.arange(10000) % 10)
    size = sum(os.path.getsize(os.path.join(r, n)) for r, _, names in os.walk(dest) for n in names)
    assert size < 1.5e6
    assert lib.published(str(tmp_path / "results"), "model4", 30, 1)


def test_a_run_without_analysis_is_not_published(tmp_path):
    run = fake_analysed(tmp_path / "runs", "model4", 30, 1)
    os.unlink(os.path.join(run, "analysis.json"))
    dest = str(tmp_path / "results" / "model4_d30" / "run1")
    with pytest.raises(FileNotFoundError):
        lib.publish(run, dest)
    assert not lib.published(str(tmp_path / "results"), "model4", 30, 1)


def published_table(tmp_path, rows):
    for (net, dim, seed), (linear, mlp, loss) in rows.items():
        run = fake_analysed(tmp_path / "runs", net, dim, seed, linear, mlp, loss)
        lib.publish(run, str(tmp_path / "results" / ("%s_d%d" % (net, dim)) / ("run%d" % seed)))
    return str(tmp_path / "results")


def test_claims_are_judged_from_the_published_runs(tmp_path):
    results = published_table(tmp_path, {
        ("model4", 30, 1): (5.0, 2.0, 66.0), ("model4", 30, 2): (6.0, 3.0, 67.0),
        ("model3", 30, 1): (9.0, 4.0, 60.0), ("deep_ae", 30, 1): (8.0, 4.5, 70.0),
        ("model4", 10, 1): (5.0, 3.0, 84.0), ("model5", 10, 1): (4.0, 3.5, 86.0),
        ("siamese", 10, 1): (3.0, 4.0, 0.02)})
    table = lib.collect(results)
    assert table[("model4", 30)]["seeds"] == [1, 2] and table[("model4", 30)]["linear"] == [5.0, 6.0]
    verdicts = {c["claim"].split(" ")[1]: c for c in lib.claims(table)}
    assert verdicts["4"]["verdict"] == "not supported"            # model5 10D linear 4.0 < model4's 5.0
    assert verdicts["3"]["verdict"] == "supported" and not verdicts["3"]["complete"]
    assert verdicts["but"]["verdict"] == "supported"
    assert verdicts["(Model"]["verdict"] == "not supported"       # tanh was better on the linear error
    assert verdicts["CAEs"]["verdict"] == "not supported"         # model3's linear 9.0 is above the deep AE's 8.0
    assert "model3 30D linear 9.00 < deep_ae 30D 8.00 (no)" in verdicts["CAEs"]["evidence"]
    assert verdicts["Siamese"]["verdict"] == "not supported"      # its MLP 4.0 against model4 10D's 3.0
    assert "siamese 10D linear 3.00 < model5 10D 4.00;" in verdicts["Siamese"]["evidence"]
    assert "siamese 10D mlp 4.00 < model4 10D 3.00 (no)" in verdicts["Siamese"]["evidence"]
    assert not verdicts["Siamese"]["complete"]                     # no Siamese net at 2D yet
    section = lib.readme_section(results)
    assert "| model4 | 30 | 1,2 | 66.50 ± 0.71; 6.65 ± 0.07 | 65.35-66.83; 2.55-2.77 |" in section
    assert section.startswith(lib.README_BEGIN) and section.endswith(lib.README_END)


def test_readme_section_is_replaced_between_its_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n%s\nold\n%s\nrest\n" % (lib.README_BEGIN, lib.README_END))
    assert lib.update_readme(str(readme), lib.README_BEGIN + "\nnew\n" + lib.README_END)
    assert readme.read_text() == "intro\n%s\nnew\n%s\nrest\n" % (lib.README_BEGIN, lib.README_END)
    readme.write_text("no markers\n")
    with pytest.raises(CaeError, match="no generated Table 4 section"):
        lib.update_readme(str(readme), "x")


def test_the_committed_readme_section_is_what_results_gives():
    with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as handle:
        text = handle.read()
    section = text[text.index(lib.README_BEGIN):text.index(lib.README_END) + len(lib.README_END)]
    assert section == lib.readme_section(os.path.join(REPO_ROOT, "results")), "run `make results` (or " \
        "`caffe-cae results --refresh-only`) and commit README.md"


def test_results_cli_needs_runs_to_train(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "caffe_cae", "results", "--out", str(tmp_path / "r")],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, cwd=REPO_ROOT)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--runs" in proc.stderr


def results_cmd(root, variant=None, limit=2):
    code = ("import sys; from caffe_cae import results; "
            "results.run(sys.argv[1], sys.argv[2], jobs=1, backend='torch', limit=%d, readme=sys.argv[3], "
            "variant=%r, " % (limit, variant) +
            "config={'iters': 20, 'data_root': sys.argv[4], "
            "'sets': ['solver.display=5', 'solver.test_interval=10', 'solver.snapshot=5'], "
            "'analyze_args': ['--folds=3', '--mlp-epochs=20', '--no-diagram']})")
    return [sys.executable, "-c", code, str(root / "runs"), str(root / "results"), str(root / "README.md"),
            str(root)]


def test_results_trains_publishes_and_resumes_after_a_kill(tmp_path):
    """Two real runs (torch, 20 iterations on tiny MNIST): killed mid-way, run again, both
    published with the report and the README section; a third call does nothing."""
    data.write_tiny(str(tmp_path / "data" / "hdf5"), n=250, n_test=300, list_prefix="data/hdf5")
    (tmp_path / "README.md").write_text("x\n%s\n%s\n" % (lib.README_BEGIN, lib.README_END))
    proc = subprocess.Popen(results_cmd(tmp_path), cwd=str(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, universal_newlines=True, start_new_session=True)
    deadline = time.time() + 300
    first = tmp_path / "runs" / "model4_d30" / "run1" / "manifest.json"
    while time.time() < deadline and not (first.exists() and "snapshots" in first.read_text()):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)                       # any interruption: the whole process group
    proc.wait()
    assert not lib.published(str(tmp_path / "results"), "model4", 30, 1)
    done = subprocess.run(results_cmd(tmp_path), cwd=str(tmp_path), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=900)
    assert done.returncode == 0, done.stdout
    for net in ("model4", "model3"):
        assert lib.published(str(tmp_path / "results"), net, 30, 1), done.stdout
        assert "codes.h5" in os.listdir(str(tmp_path / "results" / ("%s_d30" % net) / "run1"))
    assert os.path.isfile(str(tmp_path / "results" / "report" / "index.html"))
    assert "| model4 | 30 | 1 |" in (tmp_path / "README.md").read_text()
    log = [json.loads(x) for x in open(str(tmp_path / "results" / "model4_d30" / "run1" / "log.jsonl"))]
    train_iters = [e["iter"] for e in log if e.get("phase") == "train"]
    assert train_iters == sorted(set(train_iters)) and train_iters[-1] == 20      # resumed, nothing twice
    again = subprocess.run(results_cmd(tmp_path), cwd=str(tmp_path), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, universal_newlines=True, timeout=300)
    assert again.returncode == 0 and "[grid]" not in again.stdout
    shutil.rmtree(str(tmp_path / "runs"))


def test_a_difference_within_the_sampling_error_is_a_tie_not_a_verdict(tmp_path):
    # 10000 codes: the standard error of a 6 % error is about 0.24 points, of a difference about 0.34
    results = published_table(tmp_path, {
        ("model4", 30, 1): (10.6, 5.3, 65.4), ("model3", 30, 1): (10.4, 6.1, 51.6),
        ("deep_ae", 30, 1): (13.3, 6.0, 65.1)})
    table = lib.collect(results)
    assert abs(lib.error_se(table[("model3", 30)], "mlp") - 100 * (0.061 * 0.939 / 10000) ** 0.5) < 1e-9
    verdicts = {c["claim"].split(" ")[1]: c for c in lib.claims(table)}
    assert verdicts["4"]["verdict"] == "not decided"             # 10.6 vs 10.4: a tie; 5.3 < 6.1 holds
    assert "model4 30D linear 10.60 < model3 30D 10.40 (tie)" in verdicts["4"]["evidence"]
    assert "model4 30D mlp 5.30 < model3 30D 6.10;" in verdicts["4"]["evidence"] + ";"
    assert verdicts["CAEs"]["verdict"] == "not decided"          # model3's MLP 6.1 against the deep AE's 6.0
    assert verdicts["3"]["verdict"] == "supported"               # losses: no sampling error, no ties
    assert verdicts["Siamese"]["verdict"] == "not tested yet"    # no Siamese run published
    table[("model3", 30)]["mlp"] = [7.0]                          # 1 point above: beyond the noise
    assert {c["claim"].split(" ")[1]: c["verdict"] for c in lib.claims(table)}["CAEs"] == "not supported"


def test_a_variant_trains_with_its_setting_apart_and_is_set_beside_the_default(tmp_path):
    """``--variant euclidean0``: a real run (torch, 20 iterations on tiny MNIST) with the
    variant's setting, in RUNS/variants/ and results/variants/, beside the default run in the
    README section; the default table and its claims are not touched."""
    data.write_tiny(str(tmp_path / "data" / "hdf5"), n=250, n_test=300, list_prefix="data/hdf5")
    (tmp_path / "README.md").write_text("x\n%s\n%s\n" % (lib.README_BEGIN, lib.README_END))
    done = subprocess.run(results_cmd(tmp_path, variant="euclidean0", limit=1), cwd=str(tmp_path),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=900)
    assert done.returncode == 0, done.stdout
    where = tmp_path / "results" / "variants" / "euclidean0" / "model4_d10" / "run1"
    manifest = json.loads((where / "manifest.json").read_text())
    assert manifest["settings"]["loss.euclidean_weight"] == 0 and manifest["settings"]["solver.display"] == 5
    assert (tmp_path / "runs" / "variants" / "euclidean0" / "model4_d10" / "run1").is_dir()
    assert not (tmp_path / "results" / "model4_d10").exists() and lib.collect(str(tmp_path / "results")) == {}
    readme = (tmp_path / "README.md").read_text()
    assert "| `loss.euclidean_weight=0` | model4 10D seed 1 |" in readme and "(not published)" in readme
    with pytest.raises(CaeError, match="--variant nope: unknown"):
        lib.variant_dir("results", "nope")
    shutil.rmtree(str(tmp_path / "runs"))


def test_a_test_loss_missing_from_the_log_comes_from_the_analysis(tmp_path):
    """A run logged without its zero-weight Euclidean loss (the torch backend before it reported
    such losses) gets it from analysis.json, the same test set at the final weights."""
    results = published_table(tmp_path, {("model4", 10, 1): (8.0, 4.5, 88.0)})
    run = os.path.join(results, "model4_d10", "run1")
    lines = [json.loads(x) for x in open(os.path.join(run, "log.jsonl"))]
    for entry in lines:
        del entry["loss"]["euclidean"]
    open(os.path.join(run, "log.jsonl"), "w").write("".join(json.dumps(x) + "\n" for x in lines))
    analysis = json.load(open(os.path.join(run, "analysis.json")))
    analysis["losses"] = {"cross_entropy": 87.9, "euclidean": 6.1}
    json.dump(analysis, open(os.path.join(run, "analysis.json"), "w"))
    assert lib.collect(results)[("model4", 10)]["loss"] == [[88.0, 6.1]]      # the log's CE, the analysis' Euclidean
