"""Codes, reconstructions and the Fig. 11 blobs of a trained run.

``extract(run_dir, split)`` runs the run's deploy net with its last snapshot's weights over
the split's images and writes, atomically:

- ``RUN_DIR/codes.h5`` (split ``test``) or ``RUN_DIR/codes_train.h5`` (split ``train``):
  ``code`` float32 N x D (ip2encode; the deep AE's encode4; one Siamese channel's
  ip2encode), ``label`` float32 N, ``reconstruction`` float32 N x 28 x 28 (auto-encoders
  only); attrs ``net``, ``dim``, ``split``, ``iteration``, ``run_status``, ``weights``,
  ``stage`` and the split's mean losses ``loss_cross_entropy``/``loss_euclidean`` (or
  ``loss_contrastive``), computed by Caffe itself: the train_test net's TEST stage
  (``test-on-test`` or ``test-on-train``) over ceil(N / batch) batches with those weights
  (for the Siamese net the stage reads the split's pair file);
- ``RUN_DIR/blobs_digit5.h5``: for the first test image of a 5, group ``blobs`` with one
  dataset per (layer, top) step of the deploy net in forward order, named ``NN_<layer>``
  (NN the 2-digit step), attrs ``blob``, ``layer``, ``layer_type``, shape the blob's shape
  for one image (each top is captured right after its layer ran, so in-place activations
  are steps of their own); group ``params/<layer>`` with datasets ``0`` (weights) and ``1``
  (biases); dataset ``input`` 1 x 1 x 28 x 28; attrs ``label`` (5) and ``index``.

Limits: a run that is not finished is extracted from its last snapshot (``run_status`` and
``iteration`` say so). The images are read from the paths recorded in the run's manifest.
"""
import glob
import math
import os
import sys
import time

from . import specs
from .errors import CaeError
from .train import last_snapshot, read_manifest, resolve_backend

SPLITS = ("test", "train")
DIGIT = 5


def codes_name(split):
    return "codes.h5" if split == "test" else "codes_%s.h5" % split


def extract(run_dir, split="test", backend=None, stream=None, blobs=True):
    """Write codes (and the digit-5 blobs); returns a dict with paths, n, dim, losses, seconds.
    ``backend``: None (the backend of the run's last session), a name or a Backend."""
    stream = stream if stream is not None else sys.stderr
    if split not in SPLITS:
        raise CaeError("--split: expected test or train, got %r" % split)
    run_dir = os.path.abspath(run_dir)
    if not os.path.isdir(run_dir):
        raise CaeError("%s: no such run directory" % run_dir)
    manifest = read_manifest(run_dir)
    if manifest is None:
        raise CaeError("%s: not a run directory (no manifest.json); train first" % run_dir)
    snap = last_snapshot(run_dir, manifest)
    if snap is None:
        raise CaeError("%s: no snapshot to extract from (status %s); train the run first"
                       % (run_dir, manifest.get("status")))
    if manifest.get("status") != "finished":
        stream.write("%s: run is %s; extracting from its snapshot at iteration %d\n"
                     % (run_dir, manifest.get("status"), snap["iter"]))
    net, dim = manifest["net"], manifest["dim"]
    s = manifest["settings"]
    data = manifest["data"]
    images = data[split]["images"]
    test_images = data["test"]["images"]
    for path in {images, test_images}:
        if not os.path.isfile(path):
            raise CaeError("%s: image file of the run's data not found (recorded in %s)"
                           % (path, os.path.join(run_dir, "manifest.json")))
    size_key = "data.train_size" if split == "train" else "data.test_size"
    out = os.path.join(run_dir, codes_name(split))
    job = {
        "mode": manifest.get("mode", "cpu"),
        "deploy": os.path.join(run_dir, manifest["files"]["deploy"]),
        "train_test": os.path.join(run_dir, manifest["files"]["train_test"]),
        "weights": snap["caffemodel_path"], "data_h5": images,
        "code_blob": specs.code_blob(net), "recon_blob": specs.reconstruction_blob(net),
        "stage": "test-on-" + split, "stage_iter": math.ceil(s[size_key] / s["data.batch_size"]),
        "codes_out": out, "blobs_out": os.path.join(run_dir, "blobs_digit%d.h5" % DIGIT) if blobs else None,
        "digit_h5": test_images, "digit": DIGIT,
        "attrs": {"net": net, "dim": dim, "split": split, "iteration": snap["iter"],
                  "run_status": manifest.get("status"), "weights": snap["caffemodel"],
                  "stage": "test-on-" + split, "backend": manifest.get("backend", "caffe"),
                  "caffe_version": (manifest.get("engine") or {}).get("caffe_version") or ""},
        "stderr_log": os.path.join(run_dir, "engine.log"),
    }
    be = resolve_backend(backend or manifest.get("backend", "caffe").split("+")[-1])
    job["attrs"]["extract_backend"] = be.info(job["mode"]).get("backend") or ""
    t0 = time.time()
    result = {}
    tty = hasattr(stream, "isatty") and stream.isatty()
    session = be.extract(job, manifest.get("data_root") or os.getcwd())
    try:
        for event in session.events():
            if event["event"] == "progress" and tty:
                stream.write("\rextract: %s %d/%d" % (event.get("what", ""), event["done"], event["total"]))
                stream.flush()
            elif event["event"] == "result":
                result = event
            elif event["event"] == "end" and event.get("status") != "finished":
                raise CaeError("%s: extraction failed: %s" % (run_dir, event.get("message")))
    except BaseException:
        if tty:
            stream.write("\n")
        for path in (out, job["blobs_out"]):  # temporary files of a worker that was stopped
            for name in glob.glob(glob.escape(path or "") + ".tmp-*") if path else ():
                os.unlink(name)
        raise
    if tty:
        stream.write("\r" + " " * 40 + "\r")
    result.pop("event", None)
    result.update(codes=out, blobs=job["blobs_out"], seconds=round(time.time() - t0, 3), iteration=snap["iter"])
    return result
