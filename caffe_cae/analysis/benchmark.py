"""``benchmark()``: the whole analysis of one 10000 x 30 run made without Caffe, timed per stage
(for ``caffe-cae bench``); ``synthetic_codes``: Gaussian clusters with known answers (tests)."""
import json
import os
import shutil
import tempfile
import time

import numpy as np

from .. import caffe_rules
from .. import inspect as inspect_lib
from ..errors import CaeError
from ..files import write_json, write_text
from ..render import file_name, render_files
from ..schema import parse_net
from .analyze_run import analyze_run
from .figures import TSNE_PARAMS
from .measure import SEED


def synthetic_codes(n, dim, seed=SEED, spread=1.0, separation=4.0):
    """N x D Gaussian clusters, one per digit (labels 0..9 in equal shares, shuffled)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    centres = rng.normal(size=(10, dim)) * separation
    code = centres[labels] + rng.normal(size=(n, dim)) * spread
    return code.astype(np.float32), labels


def forward_steps(deploy_text):
    """The Fig. 11 steps of a deploy net for one image, as ``extract`` writes ``blobs_digit5.h5``:
    ([(layer, type, top, shape)] in forward order, one per (layer, top), with the shapes
    ``caffe_cae.inspect`` gives; {first Convolution: its weights' shape (O, C, kh, kw)})."""
    net = parse_net(deploy_text)
    info = inspect_lib.analyse(net, where="deploy", batch=1)
    steps = [(layer["name"], layer["type"], top, (1,) + tuple(info["blobs"][top][1:]))
             for layer in info["layers"] for top in layer["top"]]
    params = {}
    for layer, lp in zip(info["layers"], caffe_rules.active_layers(net, "train")):
        if layer["type"] == "Convolution":
            kernel = caffe_rules.window(lp.convolution_param)[0]
            params[layer["name"]] = (layer["output"][1], info["blobs"][layer["bottom"][0]][1]) + tuple(kernel)
            break
    return steps, params


def _bench_inputs(n, dim, seed):
    """(code, labels, images N x 28 x 28, reconstructions, what): PCA of the first ``n``
    MNIST test images (a linear auto-encoder: realistic code and reconstructions), or
    overlapping Gaussian clusters with noise images when MNIST cannot be read."""
    try:
        from .. import data
        images, labels = data.read_mnist()["test"]
    except (CaeError, OSError):
        code, labels = synthetic_codes(n, dim, seed=seed, spread=1.0, separation=0.6)
        images = np.random.default_rng(seed).random((n, 28, 28), dtype=np.float32)
        return code, labels, images, images * 0.9, "synthetic clusters"
    from sklearn.decomposition import PCA
    images = (np.asarray(images[:n], dtype=np.float32) / 255.0)
    labels = np.asarray(labels[:n]).astype(int)
    pca = PCA(n_components=dim, random_state=seed).fit(images.reshape(n, -1))
    code = pca.transform(images.reshape(n, -1)).astype(np.float32)
    recon = np.clip(pca.inverse_transform(code), 0, 1).reshape(n, 28, 28).astype(np.float32)
    return code, labels, images, recon, "PCA-%d of the MNIST test images" % dim


def benchmark(n=10000, dim=30, jobs=2, seed=SEED, work=None, mlp=None):
    """Seconds per stage of ``analyze_run`` on one n x dim run made without Caffe: the code
    is the PCA of the MNIST test images (a linear auto-encoder, so code, errors and
    reconstructions are realistic; synthetic clusters if MNIST is missing), with Fig. 11
    blobs of the shapes of Model 4's deploy net at ``dim`` and a 50000-iteration log; the
    net is rendered from the templates (train_test for the diagram). For ``caffe-cae
    bench``; returns a dict with the timings."""
    import h5py

    own = work is None
    work = work or tempfile.mkdtemp(prefix="caffe-cae-bench-analyze-")
    try:
        run = os.path.join(work, "run")
        os.makedirs(run, exist_ok=True)
        code, labels, images, recon, what = _bench_inputs(n, dim, seed)
        texts = render_files("model4", dim)
        rng = np.random.default_rng(seed)
        with h5py.File(os.path.join(work, "test.h5"), "w") as f:
            f["data"] = images.reshape(-1, 1, 28, 28)
            f["label"] = labels.astype(np.float32)
        with h5py.File(os.path.join(run, "codes.h5"), "w") as f:
            f["code"] = code
            f["label"] = labels.astype(np.float32)
            f["reconstruction"] = recon
        with h5py.File(os.path.join(run, "blobs_digit5.h5"), "w") as f:
            steps, params = forward_steps(texts["deploy"])
            for i, (layer, kind, top, shape) in enumerate(steps):
                ds = f.create_dataset("blobs/%02d_%s" % (i, layer), data=rng.random(shape, dtype=np.float32))
                ds.attrs["blob"], ds.attrs["layer"], ds.attrs["layer_type"] = top, layer, kind
            for layer, shape in params.items():
                f["params/%s/0" % layer] = rng.normal(size=shape).astype(np.float32)
            f["input"] = images[:1].reshape(1, 1, 28, 28)
        with open(os.path.join(run, "log.jsonl"), "w", encoding="utf-8") as f:
            for it in range(100, 50001, 100):
                f.write(json.dumps({"iter": it, "phase": "train", "loss": {"cross_entropy": 60 + 1e4 / it,
                                                                           "euclidean": 2 + 1e3 / it}}) + "\n")
        files = {"train_test": file_name("model4", dim, "train_test")}
        write_text(os.path.join(run, files["train_test"]), texts["train_test"])
        write_json(os.path.join(run, "manifest.json"), {"net": "model4", "dim": dim, "seed": seed, "iterations": 50000,
                                                        "files": files})
        t0, cpu = time.time(), time.process_time()
        out = analyze_run(run, jobs=jobs, seed=seed, test_h5=os.path.join(work, "test.h5"),
                          diagram=shutil.which("dot") is not None, reference_cache=None, mlp=mlp)
        wall, cpu = time.time() - t0, time.process_time() - cpu
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        # CPU seconds tell what the machine alone would take: the main process (t-SNE threads,
        # LDA, figures; the MLP too when jobs=1) and the MLP folds wherever they ran
        return {"n": n, "dim": dim, "jobs": jobs, "wall_seconds": round(wall, 2), "stages": out["timings"],
                "cpu_seconds": {"main_process": round(cpu, 2), "mlp_folds": out["timings"]["mlp_cpu"]},
                "code": what, "linear_error": out["linear_error"], "mlp_error": out["mlp_error"],
                "tsne": dict(TSNE_PARAMS), "mlp": out["classifier"]["mlp"],
                "load_average_1min": load}
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
