"""The files of a run that the analysis reads, checked: each problem is one CaeError line naming the file.

``read_manifest``, ``read_codes`` (``codes.h5`` / ``codes_train.h5``), ``read_test_images``
(the data stage's ``test.h5``), ``read_log`` (``log.jsonl``), ``read_blobs``
(``blobs_digit5.h5``, Fig. 11) and ``run_prototxt`` (the run's net).
"""
import json
import os

import numpy as np

from ..errors import CaeError


def _h5(path, what):
    import h5py
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise CaeError("%s: cannot read %s as HDF5 (%s)" % (path, what, exc)) from None


def read_manifest(run_dir):
    path = os.path.join(run_dir, "manifest.json")
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except FileNotFoundError:
        raise CaeError("%s: no manifest.json; not a run directory" % run_dir) from None
    except (OSError, ValueError) as exc:
        raise CaeError("%s: not readable JSON (%s)" % (path, exc)) from None
    if not isinstance(manifest, dict) or "net" not in manifest or "dim" not in manifest:
        raise CaeError("%s: expected a run manifest with 'net' and 'dim'" % path)
    return manifest


CODE_FILES = {"test": "codes.h5", "train": "codes_train.h5"}


def read_codes(run_dir, split="test"):
    """{"code": N x D float32, "label": N int, "reconstruction": N x 28 x 28 or None, "attrs"}."""
    path = os.path.join(run_dir, CODE_FILES[split])
    if not os.path.exists(path):
        raise CaeError("%s: not found; run `caffe-cae extract%s %s` first"
                       % (path, "" if split == "test" else " --split " + split, run_dir))
    with _h5(path, "codes") as f:
        for name in ("code", "label"):
            if name not in f:
                raise CaeError("%s: no dataset %r (expected code N x D and label N)" % (path, name))
        code = np.asarray(f["code"][...], dtype=np.float32)
        label = np.asarray(f["label"][...]).reshape(-1)
        recon = np.asarray(f["reconstruction"][...], dtype=np.float32) if "reconstruction" in f else None
        attrs = {k: _plain(v) for k, v in f.attrs.items()}
    if code.ndim != 2 or len(code) != len(label) or len(code) == 0:
        raise CaeError("%s: expected code N x D and label N, got %s and %s" % (path, code.shape, label.shape))
    if not np.all(np.isfinite(code)):
        raise CaeError("%s: code has non-finite values" % path)
    if recon is not None:
        recon = recon.reshape(len(code), 28, 28) if recon.size == len(code) * 784 else None
        if recon is None:
            raise CaeError("%s: reconstruction is not N x 28 x 28" % path)
    return {"code": code, "label": np.rint(label).astype(int), "reconstruction": recon, "attrs": attrs}


def _plain(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def read_test_images(path, n, labels):
    """Test images (N x 28 x 28) from the data stage's test.h5, checked against the codes."""
    if not path or not os.path.exists(path):
        raise CaeError("%s: test images not found (needed for the reconstruction figures); "
                       "pass --test-h5" % path)
    with _h5(path, "test images") as f:
        if "data" not in f or "label" not in f:
            raise CaeError("%s: expected datasets data N x 1 x 28 x 28 and label" % path)
        if len(f["data"]) < n:
            raise CaeError("%s: %d images, the codes have %d" % (path, len(f["data"]), n))
        images = np.asarray(f["data"][:n], dtype=np.float32).reshape(n, 28, 28)
        test_labels = np.rint(np.asarray(f["label"][:n]).reshape(-1)).astype(int)
    if not np.array_equal(test_labels, labels):
        raise CaeError("%s: labels differ from codes.h5's; not the images the codes were made from" % path)
    return images


def read_log(path):
    """log.jsonl entries (dicts with iter, phase, loss); CaeError names the bad line."""
    entries = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                raise CaeError("%s:%d: not a JSON line" % (path, number)) from None
            if isinstance(entry, dict) and "iter" in entry and isinstance(entry.get("loss"), dict):
                entries.append(entry)
    return entries


def run_prototxt(run_dir, manifest):
    """The run's train_test prototxt (else deploy), as recorded in its manifest or by name."""
    files = manifest.get("files") or {}
    for kind in ("train_test", "deploy"):
        name = files.get(kind)
        if name and os.path.exists(os.path.join(run_dir, name)):
            return os.path.join(run_dir, name)
    for suffix in ("train_test.prototxt", "deploy.prototxt"):
        found = sorted(n for n in os.listdir(run_dir) if n.endswith(suffix))
        if found:
            return os.path.join(run_dir, found[0])
    return None


def read_blobs(path):
    """Fig. 11 data: (steps, params, input image, attrs); steps are dicts in forward order."""
    with _h5(path, "blobs") as f:
        if "blobs" not in f:
            raise CaeError("%s: no group 'blobs' (expected one dataset per layer step)" % path)
        steps = []
        for name in sorted(f["blobs"].keys(), key=_step_key):
            ds = f["blobs"][name]
            steps.append({"name": name, "blob": _plain(ds.attrs.get("blob", name)),
                          "layer": _plain(ds.attrs.get("layer", name)),
                          "type": _plain(ds.attrs.get("layer_type", "")), "data": np.asarray(ds[...])})
        params = {}
        if "params" in f:
            for layer in f["params"].keys():
                group = f["params"][layer]
                params[layer] = [np.asarray(group[k][...]) for k in sorted(group.keys(), key=int)]
        image = np.asarray(f["input"][...]) if "input" in f else None
        attrs = {k: _plain(v) for k, v in f.attrs.items()}
    return steps, params, image, attrs


def _step_key(name):
    head = name.split("_", 1)[0]
    return (int(head), name) if head.isdigit() else (1 << 30, name)
