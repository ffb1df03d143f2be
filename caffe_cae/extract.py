"""Codes, reconstructions and the Fig. 11 blobs of a trained run.

``extract(run_dir, split)`` runs the run's deploy net with its last snapshot's weights over
the split's images and writes, atomically (both backends write the same files:
:mod:`caffe_cae.backends.protocol`):

- ``RUN_DIR/codes.h5`` (split ``test``) or ``RUN_DIR/codes_train.h5`` (split ``train``):
  ``code`` float32 N x D (ip2encode; the deep AE's encode4; one Siamese channel's
  ip2encode), ``label`` float32 N, ``reconstruction`` float32 N x 28 x 28 (auto-encoders
  only); attrs ``net``, ``dim``, ``split``, ``iteration``, ``run_status``, ``weights``,
  ``stage``, ``backend``, ``caffe_version``, ``extract_backend``, ``n`` and the split's mean
  losses ``loss_cross_entropy``/``loss_euclidean`` (or ``loss_contrastive``), computed by the
  backend itself: the train_test net's TEST stage (``test-on-test`` or ``test-on-train``)
  over ceil(N / batch) batches with those weights (for the Siamese net the stage reads the
  split's pair file);
- ``RUN_DIR/blobs_digit5.h5``: for the first test image of a 5, group ``blobs`` with one
  dataset per (layer, top) step of the deploy net in forward order, named ``NN_<layer>``
  (NN the 2-digit step), attrs ``blob``, ``layer``, ``layer_type``, shape the blob's shape
  for one image (each top is captured right after its layer ran, so in-place activations
  are steps of their own); group ``params/<layer>`` with datasets ``0`` (weights) and ``1``
  (biases); dataset ``input`` 1 x 1 x 28 x 28; attrs ``label`` (5), ``index`` and the codes'
  attrs but ``split`` and ``stage``.

Limits: a run that is not finished is extracted from its last snapshot (``run_status`` and
``iteration`` say so). The images are read from the paths recorded in the run's manifest.
An extraction that fails or is interrupted leaves no file behind (not even the temporary
files of a worker that was killed).
"""
import math
import os
import sys
import time

from . import files, specs
from .backends import resolve_backend
from .errors import CaeError
from .rundir import DIGIT, MANIFEST, SPLITS, RunDir, codes_name

__all__ = ["extract", "codes_name", "SPLITS", "DIGIT"]


def _job(rd, manifest, snap, split, blobs):
    net, dim, s = manifest["net"], manifest["dim"], manifest["settings"]
    size_key = "data.train_size" if split == "train" else "data.test_size"
    return {
        "mode": manifest.get("mode", "cpu"),
        "deploy": rd.file(manifest["files"]["deploy"]),
        "train_test": rd.file(manifest["files"]["train_test"]),
        "weights": snap["caffemodel_path"], "data_h5": manifest["data"][split]["images"],
        "code_blob": specs.code_blob(net), "recon_blob": specs.reconstruction_blob(net),
        "stage": "test-on-" + split, "stage_iter": math.ceil(s[size_key] / s["data.batch_size"]),
        "codes_out": rd.codes(split), "blobs_out": rd.blobs if blobs else None,
        "digit_h5": manifest["data"]["test"]["images"], "digit": DIGIT,
        "attrs": {"net": net, "dim": dim, "split": split, "iteration": snap["iter"],
                  "run_status": manifest.get("status"), "weights": snap["caffemodel"],
                  "stage": "test-on-" + split, "backend": manifest.get("backend", "caffe"),
                  "caffe_version": (manifest.get("engine") or {}).get("caffe_version") or ""},
        "stderr_log": rd.engine_log,
    }


def extract(run_dir, split="test", backend=None, stream=None, blobs=True):
    """Write codes (and the digit-5 blobs); returns a dict with paths, n, dim, losses, seconds.
    ``backend``: None (the backend of the run's last session), a name or a Backend."""
    from tqdm import tqdm

    stream = stream if stream is not None else sys.stderr
    if split not in SPLITS:
        raise CaeError("--split: expected test or train, got %r" % split)
    rd = RunDir(run_dir)
    if not os.path.isdir(rd.path):
        raise CaeError("%s: no such run directory" % rd.path)
    manifest = rd.read_manifest()
    snap = rd.last_snapshot(manifest)
    if snap is None:
        raise CaeError("%s: no snapshot to extract from (status %s); train the run first"
                       % (rd.path, manifest.get("status")))
    if manifest.get("status") != "finished":
        stream.write("%s: run is %s; extracting from its snapshot at iteration %d\n"
                     % (rd.path, manifest.get("status"), snap["iter"]))
    job = _job(rd, manifest, snap, split, blobs)
    for path in {job["data_h5"], job["digit_h5"]}:
        if not os.path.isfile(path):
            raise CaeError("%s: image file of the run's data not found (recorded in %s)" % (path, rd.file(MANIFEST)))
    outputs = [p for p in (job["codes_out"], job["blobs_out"]) if p]
    for path in outputs:
        files.check_writable(path)
    be = resolve_backend(backend or manifest.get("backend", "caffe").split("+")[-1])
    job["attrs"]["extract_backend"] = be.info(job["mode"]).get("backend") or ""
    t0 = time.time()
    result = {}
    tty = hasattr(stream, "isatty") and stream.isatty()
    bar = None
    session = be.extract(job, manifest.get("data_root") or os.getcwd())
    try:
        for event in session.events():
            if event["event"] == "progress" and tty:
                bar = bar or tqdm(total=event["total"], desc="extract: " + event.get("what", ""), file=stream,
                                  leave=False)
                bar.update(event["done"] - bar.n)
            elif event["event"] == "result":
                result = event
            elif event["event"] == "end" and event.get("status") != "finished":
                raise CaeError("%s: extraction failed: %s" % (rd.path, event.get("message")))
    except BaseException:
        for path in outputs:  # the temporary files of a worker that was stopped or killed
            files.remove_temporaries(path)
        raise
    finally:
        if bar is not None:
            bar.close()
    result.pop("event", None)
    result.update(codes=job["codes_out"], blobs=job["blobs_out"], seconds=round(time.time() - t0, 3),
                  iteration=snap["iter"])
    return result
