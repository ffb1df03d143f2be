"""caffe-cae report: tables beside the paper's numbers, rendered in headless Chromium."""
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

from caffe_cae import report
from caffe_cae.cli import cli

from conftest import missing

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _fake_run(root, net, dim, seed, iterations=300, status="finished", figure=True):
    """A run directory as train/extract/analyze leave it (values made up, files real)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    run = root / f"{net}_d{dim}" / f"run{seed}"
    (run / "figures").mkdir(parents=True)
    manifest = {"net": net, "dim": dim, "seed": seed, "iterations": iterations, "status": status,
                "wall_seconds": 60.0 * seed, "mode": "cpu", "backend": "caffe",
                "engine": {"kind": "rootfs", "caffe_version": "1.0.0"}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    keys = ["contrastive"] if net == "siamese" else ["cross_entropy", "euclidean"]
    lines = [{"iter": iterations, "phase": stage, "loss": {k: 80.0 + seed + i for i, k in enumerate(keys)}}
             for stage in ("test-on-train", "test-on-test")]
    (run / "log.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    if status == "finished":
        figures = []
        if figure:
            fig, ax = plt.subplots(figsize=(3, 2))
            ax.scatter(np.arange(20), np.arange(20) ** 0.5, c=np.arange(20))
            fig.savefig(run / "figures" / "map.png")
            plt.close(fig)
            figures.append("figures/map.png")
        analysis = {"net": net, "dim": dim, "linear_error": 5.0 + seed, "mlp_error": 3.0 + seed,
                    "sparsity": {"10": 50.0, "20": 60.0, "30": 70.0 + seed}, "figures": figures}
        (run / "analysis.json").write_text(json.dumps(analysis))
    return str(run)


@pytest.fixture
def runs(tmp_path):
    return [_fake_run(tmp_path / "runs", "model4", 10, 1), _fake_run(tmp_path / "runs", "model4", 10, 2),
            _fake_run(tmp_path / "runs", "siamese", 2, 1),
            _fake_run(tmp_path / "runs", "model3", 2, 1, status="failed")]


def test_tables_beside_paper(runs, tmp_path):
    paths = report.build(runs, str(tmp_path / "report"))
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    header, rows = data["table4"]["header"], data["table4"]["rows"]
    row = {(r[0], r[1]): dict(zip(header, r)) for r in rows}
    m4 = rows[[i for i, r in enumerate(rows) if r[0] == "model4"][0]]
    assert m4[header.index("Linear % (ours)")] == "6.50 ± 0.71"
    assert m4[header.index("Linear % (ours)") + 1] == "5.06"  # the paper's Table 4 value
    assert m4[header.index("Linear % (ours)") + 2] == "+1.44"
    assert "short" in m4[header.index("Iterations")]
    assert ("model3", "2") in row and "failed" in row[("model3", "2")]["Runs"]
    md = open(paths["markdown"]).read()
    assert "| model4 | 10 |" in md and "figures/model4/d10/run1/map.png" in md
    t5 = data["table5"]
    assert t5["rows"][0][0] == "siamese" or any(r[0] == "model4" for r in t5["rows"])


def test_cli_refuses_missing_run(tmp_path):
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "not a run directory" in result.output


def _chromium(args, cwd):
    if CHROMIUM is None:
        missing("chromium is not installed (apt-get install chromium)")
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={cwd}/profile", "--virtual-time-budget=5000"]
    return subprocess.run(base + args, capture_output=True, text=True, cwd=cwd, timeout=120)


def test_report_renders_in_chromium(runs, tmp_path):
    paths = report.build(runs, str(tmp_path / "report"))
    url = "file://" + os.path.abspath(paths["html"])
    dom = _chromium(["--dump-dom", url], str(tmp_path)).stdout
    assert "<table>" in dom and "model4" in dom
    match = re.search(r"data-images=\"(\d+) total, (\d+) broken\"", dom)
    assert match, dom[:500]
    assert int(match.group(1)) == 3 and int(match.group(2)) == 0
    shot = tmp_path / "shot.png"
    _chromium([f"--screenshot={shot}", "--window-size=1200,900", url], str(tmp_path))
    import matplotlib.image as mpimg
    pixels = mpimg.imread(str(shot))
    assert pixels.shape[0] >= 800 and pixels.std() > 0.05  # not blank


def test_broken_image_is_detected(runs, tmp_path):
    paths = report.build(runs, str(tmp_path / "report"))
    os.unlink(os.path.join(os.path.dirname(paths["html"]), "figures", "siamese", "d2", "run1", "map.png"))
    dom = _chromium(["--dump-dom", "file://" + os.path.abspath(paths["html"])], str(tmp_path)).stdout
    assert re.search(r"data-images=\"3 total, 1 broken\"", dom)


def test_failed_before_training_and_failed_stage(tmp_path):
    """A run with only failed.json (no manifest) and a trained run whose analysis failed twice."""
    early = tmp_path / "runs" / "model2_d10" / "run1"
    early.mkdir(parents=True)
    (early / "failed.json").write_text(json.dumps({"stage": "train", "message": "boom"}))
    late = _fake_run(tmp_path / "runs", "model2_d10".split("_d")[0], 10, 2, status="finished", figure=False)
    os.unlink(os.path.join(late, "analysis.json"))
    with open(os.path.join(late, "failed.json"), "w") as handle:
        handle.write(json.dumps({"stage": "analyze", "message": "boom"}))
    report.build([str(early), late], str(tmp_path / "report"))
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    header, rows = data["table4"]["header"], data["table4"]["rows"]
    assert len(rows) == 1 and rows[0][:2] == ["model2", "10"]
    assert "2 failed" in rows[0][header.index("Runs")]


def test_backend_of_each_row(tmp_path):
    """Table 4 and 5 say which backend trained each row's runs and, when it differs, which
    extracted their codes (codes.h5 attribute ``extract_backend``)."""
    import h5py
    root = tmp_path / "runs"
    caffe_run = _fake_run(root, "model4", 10, 1)
    mixed = _fake_run(root, "model3", 2, 1)
    torch_run = _fake_run(root, "deep_ae", 2, 1)
    for run, trained, extracted in ((mixed, "torch", "caffe"), (torch_run, "torch", "torch")):
        manifest = json.loads(open(os.path.join(run, "manifest.json")).read())
        manifest["backend"] = trained
        open(os.path.join(run, "manifest.json"), "w").write(json.dumps(manifest))
        with h5py.File(os.path.join(run, "codes.h5"), "w") as f:
            f.attrs["extract_backend"] = extracted
    report.build([caffe_run, mixed, torch_run], str(tmp_path / "report"))
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    header, rows = data["table4"]["header"], data["table4"]["rows"]
    backend = {r[0]: r[header.index("Backend")] for r in rows}
    assert backend == {"model4": "caffe", "model3": "torch / caffe", "deep_ae": "torch"}
    header5, rows5 = data["table5"]["header"], data["table5"]["rows"]
    assert {r[0]: r[header5.index("Backend")] for r in rows5} == {"model4": "caffe", "model3": "torch",
                                                                 "deep_ae": "torch"}
