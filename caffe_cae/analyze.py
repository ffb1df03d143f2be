"""The paper's analysis of one run (Sections 4.2, 4.3 and 5.1): numbers and figures.

``analyze_run(run_dir)`` reads ``manifest.json``, ``codes.h5`` (test split),
``blobs_digit5.h5``, ``log.jsonl`` and the run's prototxt, and writes
``RUN_DIR/analysis.json`` and ``RUN_DIR/figures/*.png|svg`` (each written through a
temporary file, then renamed). The parts, each usable alone:

* ``classify_cv`` / ``linear_error`` / ``mlp_error``: the *average per-class error* of
  Table 4, mean over the classes of (1 - recall) in %, from 10-fold stratified
  cross-validation on the 10000 test codes. The per-class recalls come from the pooled
  out-of-fold predictions (one confusion matrix over all N codes). The classifiers are
  MATLAB's, as the paper called them (``caffe_cae.classify``): ``classify()`` 'linear'
  with uniform priors (refusing a singular pooled covariance, as MATLAB does) and
  ``patternnet`` trained by ``trainscg`` (D-H-10, H from ``paper.mlp_hidden``: 14/42/66 for
  D = 2/10/30, 88 for raw pixels; 6000 epochs, the best validation epoch kept). The
  ``lbfgs`` option is scikit-learn's L-BFGS MLP trained to convergence on the whole
  training fold (``lbfgs_mlp_predict``): faster, but it overfits where MATLAB stops early.
* ``raw_pixel_reference``: the same MLP 784-88-10 on raw pixels (paper: 2.85 %), cached
  in a JSON file because it costs minutes to an hour.
* ``sparsity``: eq. (2), #{j : |c_j| <= eps}, as Section 5.1 applies it: the share in % of
  all N x D code elements whose magnitude is at most 10/20/30 % of the largest element of
  the whole code (``base='absmax'``: of the largest magnitude). ``sparsity_readings``
  also gives the older signed reading (c < t max c) for comparison.
* ``compression``: Section 5.1: 4 bytes per code element against a 784-byte image, plus
  for switch models (a MAX Pooling mask top consumed by an Unpooling layer, read from the
  run's prototxt by ``caffe_cae.inspect``) floor(log2(map positions)) bits per switch,
  as the paper counts them (9 and 6 bits for Model 3).
* figures (matplotlib, Agg, no pyplot state): the 2-D map of the test codes (the code
  itself for D = 2, t-SNE otherwise: Figs. 4-10), Table 6's reconstructions of a 2, 4, 5
  and 8, a grid of random test digits with their reconstructions, Fig. 11's panels from
  ``blobs_digit5.h5``, learning curves, first-layer filters and the net diagram (Figs.
  2-3) drawn by graphviz ``dot``.

t-SNE (scikit-learn Barnes-Hut, PCA initialisation, learning rate 'auto', perplexity 30)
is run with ``max_iter=400`` (250 of them early exaggeration) and ``angle=0.8`` instead of
the defaults 1000 and 0.5: on 10000 x 30 codes on two shared cores the defaults take over
two minutes, these settings about a quarter of that, and the clusters are the same at a
glance. ``benchmark()`` times the whole analysis of one 10000 x 30 run (PCA code of the
MNIST test images).
"""
import json
import math
import os
import shutil
import subprocess
import tempfile
import time
import warnings

import numpy as np

from . import classify
from .errors import CaeError

FOLDS = 10
SEED = 0
THRESHOLDS = (10, 20, 30)
IMAGE_BYTES = 784
TABLE6_DIGITS = (2, 4, 5, 8)
TSNE_PARAMS = {"perplexity": 30.0, "max_iter": 400, "angle": 0.8, "init": "pca", "learning_rate": "auto"}
MLP_MAX_ITER = 500
CLASSIFIERS = ("linear", "patternnet", "lbfgs")
MLP_CLASSIFIERS = CLASSIFIERS[1:]
SPARSITY_BASES = ("max", "absmax")
REFERENCE_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "caffe-cae", "reference_mlp_784.json")
_ACTIVATIONS = ("Sigmoid", "TanH", "ReLU", "PReLU", "ELU", "AbsVal", "Power")


# ---------------------------------------------------------------- classification

def per_class_error(labels, predicted):
    """(mean over classes of 1 - recall in %, {class: error %}, confusion matrix as lists)."""
    labels = np.asarray(labels).astype(int)
    predicted = np.asarray(predicted).astype(int)
    classes = np.unique(labels)
    errors = {}
    for k in classes:
        mine = labels == k
        errors[int(k)] = float(100.0 * np.mean(predicted[mine] != k))
    index = {int(k): i for i, k in enumerate(classes)}
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    for t, p in zip(labels, predicted):
        if int(p) in index:
            confusion[index[int(t)], index[int(p)]] += 1
    return float(np.mean(list(errors.values()))), errors, confusion.tolist()


def lbfgs_mlp_predict(train_x, train_y, test_x, hidden, seed=SEED, max_iter=MLP_MAX_ITER):
    """The ``lbfgs`` MLP option: scikit-learn's MLPClassifier trained to convergence with
    full-batch L-BFGS (logistic hidden units, softmax output, ``alpha=0``, inputs min-max
    scaled to [-1, 1] on the training fold, no validation split, the last iterate kept);
    returns (predictions, L-BFGS iterations used). Not what MATLAB did: see ``caffe_cae.classify``."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import MinMaxScaler
    from threadpoolctl import threadpool_limits

    scaler = MinMaxScaler(feature_range=(-1, 1)).fit(train_x)
    model = MLPClassifier(hidden_layer_sizes=(int(hidden),), activation="logistic", solver="lbfgs",
                          alpha=0.0, max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings(), threadpool_limits(1):  # small matrices: more threads only spin
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(scaler.transform(train_x), train_y)
    return model.predict(scaler.transform(test_x)), int(model.n_iter_)


def _fold(kind, x, y, train, test, hidden, seed):
    from threadpoolctl import threadpool_limits

    cpu = time.process_time()
    with threadpool_limits(1):  # tiny matrices: one BLAS thread per fold is faster
        if kind == "linear":
            pred, info = classify.matlab_classify(x[train], y[train], x[test]), None
        else:
            pred, iterations = lbfgs_mlp_predict(x[train], y[train], x[test], hidden, seed=seed)
            info = {"iterations": iterations}
    return [test], [pred], [info], time.process_time() - cpu


def _patternnet_part(x, y, splits, ids, hidden, seed, settings, fold_dir=None):
    """Some folds' patternnets in one process, one thread (see ``caffe_cae.classify``). With
    ``fold_dir`` each fold's result is kept in ``fold_dir/fold<i>.json`` as it finishes, and a
    fold found there is not trained again (long work resumes where it stopped)."""
    import torch

    torch.set_num_threads(1)
    cpu = time.process_time()
    classes, index = np.unique(y, return_inverse=True)
    preds, infos = [], []
    for i in ids:
        saved = os.path.join(fold_dir, "fold%d.json" % i) if fold_dir else None
        if saved and os.path.exists(saved):
            with open(saved, encoding="utf-8") as handle:
                kept = json.load(handle)
            preds.append(np.asarray(kept["pred"]))
            infos.append(kept["info"])
            continue
        train, test = splits[i]
        pred, info = classify.patternnet_folds([(x[train], index[train], x[test])], hidden, len(classes), seed=seed,
                                               settings=settings, fold_ids=[i])
        preds.append(classes[pred[0]])
        infos.append(info[0])
        if saved:
            write_json(saved, {"pred": preds[-1].tolist(), "info": info[0]})
    return [splits[i][1] for i in ids], preds, infos, time.process_time() - cpu


def classify_cv(code, labels, kind, folds=FOLDS, seed=SEED, hidden=None, jobs=1, mlp=None, fold_dir=None):
    """Out-of-fold predictions of ``kind`` with stratified k-fold CV: 'linear' (MATLAB
    classify), 'patternnet' (MATLAB patternnet + trainscg, the paper's MLP; ``mlp`` overrides
    its settings, ``caffe_cae.classify.MLP_DEFAULTS``) or 'lbfgs' (``lbfgs_mlp_predict``).

    Returns {"error": %, "per_class": {digit: %}, "confusion": [[...]], "seconds", "cpu_seconds",
    and for the MLPs "hidden" and "folds" (per-fold epochs or iterations)}. ``jobs`` processes
    share the folds (joblib); ``fold_dir`` keeps each patternnet fold as it finishes (resume)."""
    from sklearn.model_selection import StratifiedKFold

    if kind not in CLASSIFIERS:
        raise CaeError("classifier: expected one of %s, got %r" % (", ".join(CLASSIFIERS), kind))
    x = np.asarray(code, dtype=np.float64).reshape(len(code), -1)
    y = np.asarray(labels).astype(int)
    _check_folds(y, folds, "labels")
    if kind != "linear" and hidden is None:
        hidden = mlp_hidden_size(x.shape[1])
    settings = classify.mlp_settings(**(mlp or {})) if kind == "patternnet" else None
    t0 = time.time()
    splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, y))
    if kind == "patternnet":
        shares = [list(range(folds))[j::jobs] for j in range(min(jobs, folds))]
        tasks = [(_patternnet_part, (x, y, splits, ids, hidden, seed, settings, fold_dir)) for ids in shares]
    else:
        tasks = [(_fold, (kind, x, y, tr, te, hidden, seed + i)) for i, (tr, te) in enumerate(splits)]
    if jobs > 1 and len(tasks) > 1:
        from joblib import Parallel, delayed
        parts = Parallel(n_jobs=jobs)(delayed(fn)(*args) for fn, args in tasks)
    else:
        parts = [fn(*args) for fn, args in tasks]
    predicted = np.empty_like(y)
    fold_info = []
    for tests, preds, infos, _ in parts:
        for test, pred in zip(tests, preds):
            predicted[test] = pred
        fold_info.extend(i for i in infos if i is not None)
    error, per_class, confusion = per_class_error(y, predicted)
    out = {"error": round(error, 4), "per_class": {str(k): round(v, 4) for k, v in per_class.items()},
           "confusion": confusion, "seconds": round(time.time() - t0, 3),
           "cpu_seconds": round(sum(p[3] for p in parts), 3)}
    if kind != "linear":
        out["hidden"] = int(hidden)
        out["folds"] = sorted(fold_info, key=lambda i: i.get("fold", 0))
        out["classifier"] = classifier_description(kind, settings)
    return out


def classifier_description(kind, settings=None):
    """What analysis.json says of a classifier: its name and settings."""
    if kind == "linear":
        return {"name": "classify", "what": "MATLAB classify(sample, training, group): 'linear', uniform priors, "
                                            "pooled within-class covariance over N - K; refuses a singular one"}
    if kind == "patternnet":
        return {"name": "patternnet", "what": "MATLAB patternnet + train + trainscg (caffe_cae.classify)",
                "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}}
    return {"name": "lbfgs", "what": "scikit-learn MLPClassifier, full-batch L-BFGS, logistic hidden, alpha=0, "
                                     "inputs scaled to [-1, 1], no validation split",
            "settings": {"max_iter": MLP_MAX_ITER}}


def _check_folds(labels, folds, where):
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise CaeError("%s: only one class; nothing to classify" % where)
    if counts.min() < folds:
        raise CaeError("%s: class %s has %d samples; %d-fold cross-validation needs at least %d per class "
                       "(--folds)" % (where, classes[np.argmin(counts)], counts.min(), folds, folds))


def linear_error(code, labels, **kwargs):
    """Average per-class error (%) of MATLAB's classify()."""
    return classify_cv(code, labels, "linear", **kwargs)["error"]


def mlp_error(code, labels, classifier="patternnet", **kwargs):
    """Average per-class error (%) of the paper's MLP (``classifier`` 'patternnet' or 'lbfgs')."""
    return classify_cv(code, labels, classifier, **kwargs)["error"]


def mlp_hidden_size(dim):
    """Hidden units of the paper's D-H-10 classifier: 14/42/66 for D = 2/10/30, 88 for the
    784 raw pixels; other D by the |Data/(w+b)| = 100 rule as ``caffe_cae.paper.mlp_hidden``
    reads it (|Data| = 9000 x D, one training fold)."""
    from . import paper
    if int(dim) == 784:
        return int(paper.load()["mlp"]["raw_pixels"]["hidden"])
    return paper.mlp_hidden(int(dim))


def classifier_tag(classifier, mlp=None):
    """A short name of an MLP classifier and the settings that change its result (cache keys)."""
    if classifier == "patternnet":
        s = classify.mlp_settings(**(mlp or {}))
        return "patternnet-%s-e%d" % (s["hidden_transfer"], s["epochs"])
    return "lbfgs-it%d" % MLP_MAX_ITER


def raw_pixel_reference(images, labels, cache=REFERENCE_CACHE, folds=FOLDS, seed=SEED, jobs=1, compute=True,
                        classifier="patternnet", mlp=None):
    """The 784-88-10 MLP on raw test images (the paper's 2.85 % row), cached in ``cache``.

    The cache is keyed by the number of images, a digest of images and labels, folds, seed
    and the classifier with its settings; a matching cached result is returned without
    training. With ``compute=False`` a missing entry gives None. The patternnet's folds are
    kept as they finish (``reference-folds/<key>/`` beside the cache), so an interrupted
    computation resumes with the folds still missing."""
    import hashlib

    images = np.asarray(images, dtype=np.float32).reshape(len(images), -1)
    labels = np.asarray(labels).astype(int)
    digest = hashlib.sha256(images.tobytes() + labels.astype(np.int64).tobytes()).hexdigest()[:16]
    key = "n%d-%s-f%d-s%d-%s" % (len(images), digest, folds, seed, classifier_tag(classifier, mlp))
    store = {}
    if cache and os.path.exists(cache):
        try:
            with open(cache, encoding="utf-8") as handle:
                store = json.load(handle)
        except (OSError, ValueError):
            store = {}
    if key in store:
        return dict(store[key], cached=True)
    if not compute:
        return None
    partial = os.path.join(os.path.dirname(os.path.abspath(cache)), "reference-folds", key) if cache else None
    result = classify_cv(images, labels, classifier, folds=folds, seed=seed, hidden=mlp_hidden_size(784), jobs=jobs,
                         mlp=mlp, fold_dir=partial)
    result.pop("confusion", None)
    result["size"] = "784-%d-10" % result["hidden"]
    if cache:
        store[key] = result
        write_json(cache, store)
        if partial:
            shutil.rmtree(partial, ignore_errors=True)
    return dict(result, cached=False)


# ---------------------------------------------------------------- sparsity, compression

def sparsity(code, thresholds=THRESHOLDS, base="max"):
    """Eq. (2), #{j : |c_j| <= eps}, as Section 5.1 reports it: {"10": %, "20": %, "30": %} of
    all N x D code elements whose magnitude is at most t % of the base. ``base`` 'max': the
    largest element of the whole code (Section 5.1's "maximum value found in these ...
    elements"); 'absmax': the largest magnitude (the same for a non-negative code)."""
    if base not in SPARSITY_BASES:
        raise CaeError("--sparsity-base: expected one of %s, got %r" % (", ".join(SPARSITY_BASES), base))
    values = np.asarray(code, dtype=np.float64).ravel()
    if values.size == 0:
        raise CaeError("code: empty, no sparsity")
    magnitude = np.abs(values)
    top = values.max() if base == "max" else magnitude.max()
    return {str(t): round(float(100.0 * np.mean(magnitude <= top * t / 100.0)), 4) for t in thresholds}


def sparsity_readings(code, threshold=30):
    """The three readings of eq. (2) at one threshold, for comparison (analysis.json): counting
    c < t max c (negative elements count as sparse), |c| <= t max c (the default), |c| <= t max |c|."""
    values = np.asarray(code, dtype=np.float64).ravel()
    cut = threshold / 100.0
    return {"signed_below_max": round(float(100.0 * np.mean(values < cut * values.max())), 4),
            "abs_le_max": sparsity(values, (threshold,), "max")[str(threshold)],
            "abs_le_absmax": sparsity(values, (threshold,), "absmax")[str(threshold)]}


def compression(dim, switches=None):
    """Section 5.1 for a code of ``dim`` floats plus ``switches`` ({mask: {"count", "bits"}}).

    Returns image/code/switch/total bytes and the ratio in % (1 - total / 784)."""
    code_bytes = 4 * int(dim)
    switches = {name: {"count": int(s["count"]), "bits": int(s["bits"]), "positions": s.get("positions"),
                       "bytes": int(s["count"]) * int(s["bits"]) / 8.0} for name, s in (switches or {}).items()}
    total = code_bytes + sum(s["bytes"] for s in switches.values())
    return {"image_bytes": IMAGE_BYTES, "code_bytes": code_bytes, "switches": switches,
            "switch_bytes": total - code_bytes, "total_bytes": total,
            "ratio_percent": round(100.0 * (1.0 - total / IMAGE_BYTES), 2)}


def switch_bits(positions):
    """Bits per switch as the paper counts them: floor(log2(positions in the pooled map))."""
    return int(math.floor(math.log2(positions)))


def net_switches(prototxt):
    """{mask top: {"count", "positions", "bits"}} of a net's pooling switches that an
    Unpooling layer consumes (empty for nets without switches), from ``caffe_cae.inspect``."""
    from .inspect import inspect_net
    info = inspect_net(prototxt)
    found = (info.get("compression") or {}).get("switches") or {}
    return {name: {"count": s["count"], "positions": s["positions"], "bits": switch_bits(s["positions"])}
            for name, s in found.items()}


# ---------------------------------------------------------------- files

def write_json(path, value):
    """Write JSON through a temporary file in the same folder, then rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(value, out, indent=1, sort_keys=False)
            out.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


# ---------------------------------------------------------------- figures

def _figure(width, height):
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), dpi=100)


def save_figure(fig, folder, stem):
    """Save ``fig`` as stem.png and stem.svg (atomic); returns the two file names."""
    names = []
    for ext in ("png", "svg"):
        target = os.path.join(folder, "%s.%s" % (stem, ext))
        handle, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix="." + ext)
        os.close(handle)
        try:
            fig.savefig(tmp, format=ext, dpi=100)
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        names.append(os.path.basename(target))
    return names


def embed_2d(code, seed=SEED, jobs=1, tsne=None):
    """(N x 2 map, method): the code itself for D = 2, t-SNE of it otherwise (D = 1: index)."""
    code = np.asarray(code, dtype=np.float64)
    if code.shape[1] == 2:
        return code, "code"
    if code.shape[1] == 1:
        return np.column_stack([code[:, 0], np.arange(len(code))]), "code (1-D) vs index"
    from sklearn.manifold import TSNE
    params = dict(TSNE_PARAMS, **(tsne or {}))
    params["perplexity"] = min(params["perplexity"], max(1.0, (len(code) - 1) / 3.0))
    return TSNE(n_components=2, random_state=seed, n_jobs=jobs, **params).fit_transform(code), "t-SNE"


def fig_code_map(points, labels, title):
    fig = _figure(6.5, 6)
    ax = fig.add_subplot(1, 1, 1)
    colours = _tab10()
    size = float(np.clip(2e4 / max(len(points), 1), 1.5, 12.0))
    for k in np.unique(labels):
        mine = labels == k
        ax.scatter(points[mine, 0], points[mine, 1], s=size, color=colours[int(k) % 10], label=str(k),
                   rasterized=True, linewidths=0)
    ax.legend(markerscale=5, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def _tab10():
    from matplotlib import colormaps
    return [colormaps["tab10"](i) for i in range(10)]


def _mosaic(tiles, columns, pad=1, fill=np.nan):
    """Tiles (n x h x w) into one image, ``columns`` per row, separated by ``pad`` pixels."""
    tiles = np.asarray(tiles, dtype=np.float64)
    n, h, w = tiles.shape
    rows = int(math.ceil(n / float(columns)))
    out = np.full((rows * (h + pad) - pad, columns * (w + pad) - pad), fill)
    for i in range(n):
        r, c = divmod(i, columns)
        out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = tiles[i]
    return out


def pick_digits(labels, digits=TABLE6_DIGITS, seed=SEED):
    """One random test index per digit (fixed seed), as Table 6's 'random digits'."""
    rng = np.random.default_rng(seed)
    picked = []
    for d in digits:
        where = np.flatnonzero(labels == d)
        if len(where):
            picked.append(int(rng.choice(where)))
    return picked


def fig_reconstructions(images, recon, indices, labels, title):
    fig = _figure(1.6 * max(len(indices), 1) + 1, 3.6)
    for j, i in enumerate(indices):
        for row, (source, name) in enumerate(((images, "input"), (recon, "reconstruction"))):
            ax = fig.add_subplot(2, len(indices), row * len(indices) + j + 1)
            ax.imshow(source[i], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
            if row == 0:
                ax.set_title("digit %d (#%d)" % (labels[i], i), fontsize=8)
    fig.suptitle(title, fontsize=9)
    return fig


def fig_recon_grid(images, recon, indices, title, columns=10):
    """Rows of ``columns`` inputs, each followed by a row of their reconstructions."""
    tiles = []
    for start in range(0, len(indices), columns):
        chunk = list(indices[start:start + columns])
        blank = [np.full((28, 28), np.nan)] * (columns - len(chunk))
        tiles += [images[i] for i in chunk] + blank + [recon[i] for i in chunk] + blank
    mosaic = _mosaic(np.stack(tiles), columns, pad=2)
    fig = _figure(8, 8 * mosaic.shape[0] / mosaic.shape[1] + 0.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(np.ma.masked_invalid(mosaic), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title + " (odd rows: inputs, even rows: reconstructions)", fontsize=9)
    fig.tight_layout()
    return fig


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


def blob_size(shape):
    """The paper's size text: H x W x C for maps (24x24x26), 1x1xN for fully-connected blobs."""
    dims = list(shape[1:]) if len(shape) > 1 else list(shape)
    if len(dims) >= 3:
        c, h, w = dims[0], dims[1], int(np.prod(dims[2:]))
        return "%dx%dx%d" % (h, w, c), (h * w > 1)
    return "1x1x%d" % int(np.prod(dims)), False


def panel_title(step):
    size, _ = blob_size(step["data"].shape)
    data = step["data"]
    return "%s|%s %s [%.3g..%.3g]" % (step["blob"], step["layer"], size, float(data.min()), float(data.max()))


def fig_blobs(steps, image=None, title=""):
    """One panel per (blob, layer) step: maps as a mosaic, fully-connected blobs as bars."""
    first_is_input = bool(steps) and steps[0]["type"] in ("Input", "Data", "HDF5Data", "MemoryData")
    panels = ([{"blob": "data", "layer": "input", "type": "Input", "data": image}]
              if image is not None and not first_is_input else []) + list(steps)
    columns = 5
    rows = int(math.ceil(len(panels) / float(columns)))
    fig = _figure(3.2 * columns, 2.9 * rows + 0.4)
    for i, step in enumerate(panels):
        ax = fig.add_subplot(rows, columns, i + 1)
        data = np.asarray(step["data"], dtype=np.float64)
        _, spatial = blob_size(data.shape)
        if spatial or data.size == 784:     # a flat 784-vector (deep AE) is an image too
            maps = data.reshape(data.shape[1], data.shape[2], -1) if spatial else data.reshape(1, 28, 28)
            lo, hi = float(maps.min()), float(maps.max())
            ax.imshow(np.ma.masked_invalid(_mosaic(maps, int(math.ceil(math.sqrt(len(maps)))))),
                      cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            values = data.ravel()
            ax.bar(np.arange(1, len(values) + 1), values, width=1.0, color="tab:blue", linewidth=0)
            ax.set_xlim(0.5, len(values) + 0.5)
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.tick_params(labelsize=6)
        ax.set_title(panel_title(step), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def first_layer(params, steps):
    """(layer, weights) of the first layer with weights, in forward order (conv1 / encode1)."""
    for step in steps:
        if step["layer"] in params and params[step["layer"]]:
            return step["layer"], params[step["layer"]][0]
    for name in ("conv1", "encode1"):
        if name in params and params[name]:
            return name, params[name][0]
    return None, None


def fig_filters(layer, weights, title, limit=100):
    """First-layer filters, each scaled to its own range: conv kernels, or fully-connected
    rows shown as 28 x 28 images (at most ``limit``)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 4:
        tiles = w.reshape(-1, w.shape[2], w.shape[3])
    elif w.ndim == 2 and w.shape[1] == 784:
        tiles = w.reshape(-1, 28, 28)
    else:
        raise CaeError("params/%s/0: cannot show weights of shape %s as filters" % (layer, w.shape))
    tiles = tiles[:limit]
    lo = tiles.min(axis=(1, 2), keepdims=True)
    span = np.maximum(tiles.max(axis=(1, 2), keepdims=True) - lo, 1e-12)
    mosaic = _mosaic((tiles - lo) / span, int(math.ceil(math.sqrt(len(tiles)))))
    fig = _figure(6, 6.3)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(np.ma.masked_invalid(mosaic), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title("%s: %s weights %s" % (title, layer, "x".join(str(s) for s in w.shape)), fontsize=9)
    fig.tight_layout()
    return fig


def fig_learning_curves(entries, title):
    keys = []
    for entry in entries:
        for key in entry["loss"]:
            if key not in keys:
                keys.append(key)
    fig = _figure(5 * max(len(keys), 1), 4)
    styles = {"train": ("tab:red", "-"), "test-on-train": ("tab:orange", "--"), "test-on-test": ("k", "-")}
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, max(len(keys), 1), i + 1)
        for phase, (colour, line) in styles.items():
            points = [(e["iter"], e["loss"][key]) for e in entries if e.get("phase") == phase and key in e["loss"]
                      and e["loss"][key] is not None]
            if points:
                x, y = zip(*sorted(points))
                ax.plot(x, y, line, color=colour, label=phase, marker="." if len(x) < 30 else None)
        ax.set_xlabel("iteration")
        ax.set_ylabel(key + " loss")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- net diagram

def _train_active(layer, train_phase):
    if len(layer.include):
        return any(not r.HasField("phase") or r.phase == train_phase for r in layer.include)
    if len(layer.exclude):
        return not any(not r.HasField("phase") or r.phase == train_phase for r in layer.exclude)
    return True


def _layer_note(layer):
    """A short parameter text for a diagram node (kernel x planes, units, pooling)."""
    try:
        if layer.type in ("Convolution", "Deconvolution"):
            p = layer.convolution_param
            k = list(p.kernel_size)[0] if len(p.kernel_size) else p.kernel_h
            return "%dx%dx%d" % (k, k, p.num_output)
        if layer.type == "InnerProduct":
            return "%d" % layer.inner_product_param.num_output
        if layer.type == "Pooling":
            p = layer.pooling_param
            return "%s %dx%d" % (p.PoolMethod.Name(p.pool), p.kernel_size, p.kernel_size)
        if layer.type == "Unpooling":
            p = layer.unpooling_param
            return "%s %dx%d" % (p.UnpoolMethod.Name(p.unpool), p.kernel_size, p.kernel_size)
    except (AttributeError, ValueError):
        return ""
    return ""


def _quote(text):
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def net_dot(net):
    """Graphviz text for a parsed NetParameter (TRAIN phase; legacy nets are upgraded first):
    layers as boxes (activations green, losses red, others blue), blobs as yellow octagons.
    A blob rewritten in place gets a new octagon per writer, like the panels of Fig. 11."""
    from .proto import caffe_cae_pb2 as pb
    from .schema import syntax_of
    if syntax_of(net) == "legacy":
        from .upgrade import upgrade
        net = upgrade(net, reshape_fix=False)
    lines = ["digraph %s {" % _quote(net.name or "net"), "  rankdir=TB; nodesep=0.25; ranksep=0.3;",
             '  node [fontname="Helvetica", fontsize=10];']
    version = {}
    for index, layer in enumerate(net.layer):
        if not _train_active(layer, pb.TRAIN):
            continue
        lid = "L%d" % index
        if layer.type in _ACTIVATIONS:
            colour = "#b6e3a8"
        elif "Loss" in layer.type:
            colour = "#f4b6b6"
        else:
            colour = "#a9c8ef"
        note = _layer_note(layer)
        label = "%s\\n%s%s" % (layer.name, layer.type, ("\\n" + note) if note else "")
        lines.append('  %s [shape=box, style="filled", fillcolor="%s", label="%s"];'
                     % (lid, colour, label.replace('"', "'")))
        for bottom in layer.bottom:
            if bottom not in version:
                version[bottom] = 0
                lines.append('  %s [shape=octagon, style="filled", fillcolor="#f6e58d", label=%s];'
                             % (_quote("B:%s:0" % bottom), _quote(bottom)))
            lines.append("  %s -> %s;" % (_quote("B:%s:%d" % (bottom, version[bottom])), lid))
        for top in layer.top:
            version[top] = version.get(top, -1) + 1
            node = _quote("B:%s:%d" % (top, version[top]))
            lines.append('  %s [shape=octagon, style="filled", fillcolor="#f6e58d", label=%s];' % (node, _quote(top)))
            lines.append("  %s -> %s;" % (lid, node))
    lines.append("}")
    return "\n".join(lines) + "\n"


def dot_binary():
    """Path of graphviz ``dot``; CaeError when it is not installed."""
    path = shutil.which("dot")
    if path is None:
        raise CaeError("graphviz `dot` not found on PATH (needed for the net diagram): "
                       "apt-get install graphviz, or pass --no-diagram")
    return path


def draw_net(prototxt, folder, stem="net"):
    """net.dot, net.png and net.svg in ``folder`` from the run's prototxt; returns file names."""
    from .schema import parse_net
    text = net_dot(parse_net(prototxt))
    dot = dot_binary()
    names = []
    for ext in ("dot", "png", "svg"):
        target = os.path.join(folder, "%s.%s" % (stem, ext))
        handle, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix="." + ext)
        os.close(handle)
        try:
            if ext == "dot":
                with open(tmp, "w", encoding="utf-8") as out:
                    out.write(text)
            else:
                proc = subprocess.run([dot, "-T" + ext, "-Gdpi=80", "-o", tmp], input=text.encode("utf-8"),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
                if proc.returncode != 0 or os.path.getsize(tmp) == 0:
                    raise CaeError("%s: graphviz dot failed: %s" % (prototxt, proc.stderr.decode("utf-8", "replace")
                                                                    .strip().splitlines()[-1:] or "no output"))
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        names.append(os.path.basename(target))
    return names


# ---------------------------------------------------------------- one run

def paper_row(net, dim):
    """The paper's Table 4 values and Section 5.1 compression for (net, dim); None where absent."""
    from . import paper
    data = paper.load()
    row = (data.get("table4", {}).get(net) or {}).get(str(dim)) or {}
    comp = data.get("compression", {})
    out = {"linear_error": row.get("linear_error"), "mlp_error": row.get("mlp_error"),
           "sparsity": {"30": row.get("sparsity")} if row.get("sparsity") is not None else None,
           "mlp_size": "%d-%d-10" % (dim, mlp_hidden_size(dim)),
           "raw_pixel_mlp_error": data.get("mlp", {}).get("raw_pixels", {}).get("mlp_error")}
    if net == "model3" and "model3" in comp:
        m3 = comp["model3"]
        out["compression"] = {"total_bytes_range": [m3.get("min_bytes"), m3.get("max_bytes")],
                              "ratio_percent": m3.get("ratio_percent")}
    elif str(dim) in comp.get("others_ratio_percent", {}):
        out["compression"] = {"total_bytes": 4 * dim, "ratio_percent": comp["others_ratio_percent"][str(dim)]}
    else:
        out["compression"] = None
    return out


def analyze_run(run_dir, folds=FOLDS, seed=SEED, jobs=1, test_h5=None, diagram=True, reference_cache=REFERENCE_CACHE,
                tsne=None, progress=None, classifier="patternnet", mlp=None, sparsity_base="max"):
    """Analyse one run directory; writes analysis.json and figures/, returns the analysis dict.

    ``test_h5``: the test images (default: the path in the run's manifest) for the
    reconstruction figures; ``reference_cache``: where a computed raw-pixel reference row
    is looked up (never computed here; see ``raw_pixel_reference``); ``classifier``: the
    MLP, 'patternnet' (MATLAB's, the default) or 'lbfgs', ``mlp`` its settings
    (``caffe_cae.classify.MLP_DEFAULTS``); ``sparsity_base``: see ``sparsity``."""
    say = progress or (lambda message: None)
    run_dir = os.path.abspath(run_dir)
    if not os.path.isdir(run_dir):
        raise CaeError("%s: no such run directory" % run_dir)
    manifest = read_manifest(run_dir)
    net, dim = manifest["net"], int(manifest["dim"])
    prototxt = run_prototxt(run_dir, manifest)
    if diagram:
        if prototxt is None:
            raise CaeError("%s: no *train_test.prototxt or *deploy.prototxt for the net diagram "
                           "(or pass --no-diagram)" % run_dir)
        dot_binary()
    codes = read_codes(run_dir)
    code, labels, recon = codes["code"], codes["label"], codes["reconstruction"]
    if code.shape[1] != dim:
        raise CaeError("%s: code has %d columns, manifest says dim %d" % (os.path.join(run_dir, "codes.h5"),
                                                                           code.shape[1], dim))
    _check_folds(labels, folds, os.path.join(run_dir, "codes.h5") + ": label")
    if classifier not in MLP_CLASSIFIERS:
        raise CaeError("--mlp: expected one of %s, got %r" % (", ".join(MLP_CLASSIFIERS), classifier))
    if classifier == "patternnet":
        classify.mlp_settings(**(mlp or {}))                    # bad settings fail before the slow parts
    sparsity(code[:1], base=sparsity_base)
    try:
        classify.check_classify(code, labels)
    except classify.SingularCovariance as exc:
        raise CaeError("%s: MATLAB classify() refuses this code: %s" % (run_dir, exc)) from None
    # every input is read and checked before the slow parts
    images = None
    if recon is not None:
        path = test_h5 or ((manifest.get("data") or {}).get("test") or {}).get("images")
        images = read_test_images(path, len(code), labels)
    blobs_path = os.path.join(run_dir, "blobs_digit5.h5")
    blobs = read_blobs(blobs_path) if os.path.exists(blobs_path) else None
    log_path = os.path.join(run_dir, "log.jsonl")
    entries = read_log(log_path) if os.path.exists(log_path) else []
    switches = net_switches(prototxt) if prototxt else None

    timings = {}
    clock = time.time()
    result = {"net": net, "dim": dim, "n": int(len(code)), "folds": folds, "seed": seed,
              "iterations": manifest.get("iterations")}
    say("%s: linear classifier (%d-fold)" % (run_dir, folds))
    try:
        linear = classify_cv(code, labels, "linear", folds=folds, seed=seed, jobs=1)
    except classify.SingularCovariance as exc:
        raise CaeError("%s: MATLAB classify() refuses a training fold: %s" % (run_dir, exc)) from None
    timings["linear"] = linear["seconds"]
    say("%s: MLP %d-%d-10 (%s, %d-fold)" % (run_dir, dim, mlp_hidden_size(dim), classifier_tag(classifier, mlp),
                                            folds))
    net_mlp = classify_cv(code, labels, classifier, folds=folds, seed=seed, jobs=jobs, mlp=mlp)
    timings["mlp"] = net_mlp["seconds"]
    timings["mlp_cpu"] = net_mlp["cpu_seconds"]
    result.update(linear_error=linear["error"], mlp_error=net_mlp["error"],
                  mlp_size="%d-%d-10" % (dim, net_mlp["hidden"]),
                  per_class_error={"linear": linear["per_class"], "mlp": net_mlp["per_class"]},
                  confusion={"linear": linear["confusion"], "mlp": net_mlp["confusion"]},
                  mlp_folds=net_mlp["folds"])
    result["sparsity"] = sparsity(code, base=sparsity_base)
    result["sparsity_base"] = sparsity_base
    result["sparsity_readings"] = sparsity_readings(code)
    result["code_range"] = [float(code.min()), float(code.max())]
    result["compression"] = compression(dim, switches)
    result["paper"] = paper_row(net, dim)
    reference = raw_pixel_reference(images, labels, cache=reference_cache, folds=folds, seed=seed, compute=False,
                                    classifier=classifier, mlp=mlp) if images is not None and reference_cache else None
    result["reference"] = {"raw_pixel_mlp_error": reference["error"], "size": reference["size"]} if reference else None
    result["losses"] = {k[len("loss_"):]: v for k, v in codes["attrs"].items() if k.startswith("loss_")}

    folder = os.path.join(run_dir, "figures")
    os.makedirs(folder, exist_ok=True)
    figures, skipped = [], {}
    label = "%s D=%d" % (net, dim)

    def add(stem, make):
        t0 = time.time()
        fig = make()
        names = save_figure(fig, folder, stem) if fig is not None else draw_net(prototxt, folder, stem)
        figures.extend("figures/" + n for n in names if not n.endswith(".dot"))
        timings["figure_" + stem] = round(time.time() - t0, 3)

    say("%s: 2-D map of the codes" % run_dir)
    t0 = time.time()
    points, method = embed_2d(code, seed=seed, jobs=max(jobs, 1), tsne=tsne)
    timings["embedding"] = round(time.time() - t0, 3)
    result["code_map"] = {"method": method, "params": dict(TSNE_PARAMS, **(tsne or {})) if method == "t-SNE" else None}
    add("code_map", lambda: fig_code_map(points, labels, "%s: %d test codes, %s" % (label, len(code), method)))
    if recon is not None:
        picked = pick_digits(labels, seed=seed)
        result["table6_indices"] = picked
        add("reconstructions", lambda: fig_reconstructions(images, recon, picked, labels, "%s: Table 6 digits" % label))
        grid = list(np.random.default_rng(seed).choice(len(code), size=min(40, len(code)), replace=False))
        add("reconstruction_grid", lambda: fig_recon_grid(images, recon, grid, "%s: random test digits" % label))
    else:
        skipped["reconstructions"] = "codes.h5 has no reconstruction (not an auto-encoder)"
    if blobs is not None:
        steps, params, image, attrs = blobs
        add("blobs_digit5", lambda: fig_blobs(steps, image, "%s: encoding and decoding digit %s (Fig. 11)"
                                              % (label, attrs.get("label", "5"))))
        layer, weights = first_layer(params, steps)
        if layer is not None:
            add("filters", lambda: fig_filters(layer, weights, label))
        else:
            skipped["filters"] = "blobs_digit5.h5 has no params"
    else:
        skipped["blobs_digit5"] = skipped["filters"] = "no blobs_digit5.h5"
    if entries:
        add("learning_curves", lambda: fig_learning_curves(entries, "%s: losses" % label))
    else:
        skipped["learning_curves"] = "no losses in log.jsonl"
    if diagram:
        add("net", lambda: None)
    else:
        skipped["net"] = "--no-diagram"
    timings["figures"] = round(sum(v for k, v in timings.items() if k.startswith("figure_")), 3)
    timings["total"] = round(time.time() - clock, 3)
    result.update(figures=figures, figures_skipped=skipped, timings=timings,
                  classifier={"linear": classifier_description("linear"), "mlp": net_mlp["classifier"]})
    write_json(os.path.join(run_dir, "analysis.json"), result)
    return result


def classify_split(run_dir, split="train", folds=FOLDS, seed=SEED, jobs=1, classifier="patternnet", mlp=None,
                   sparsity_base="max", progress=None):
    """Table 4's error and sparsity columns on another split's codes (``codes_train.h5``: the
    60000 training images), 10-fold CV as for the test codes; writes
    ``RUN_DIR/analysis_<split>.json`` and returns it. No figures. ``classifier='none'``:
    the linear classifier only (the MLP on 60000 codes costs six times the test codes')."""
    say = progress or (lambda message: None)
    run_dir = os.path.abspath(run_dir)
    manifest = read_manifest(run_dir)
    codes = read_codes(run_dir, split)
    code, labels = codes["code"], codes["label"]
    _check_folds(labels, folds, os.path.join(run_dir, CODE_FILES[split]) + ": label")
    try:
        classify.check_classify(code, labels)
    except classify.SingularCovariance as exc:
        raise CaeError("%s: MATLAB classify() refuses this code: %s" % (run_dir, exc)) from None
    say("%s: %s codes: linear classifier and MLP (%d-fold)" % (run_dir, split, folds))
    linear = classify_cv(code, labels, "linear", folds=folds, seed=seed)
    net_mlp = classify_cv(code, labels, classifier, folds=folds, seed=seed, jobs=jobs, mlp=mlp) \
        if classifier != "none" else {"error": None, "per_class": None, "folds": None, "classifier": None, "seconds": 0}
    result = {"net": manifest["net"], "dim": int(manifest["dim"]), "split": split, "n": int(len(code)),
              "folds": folds, "seed": seed, "linear_error": linear["error"], "mlp_error": net_mlp["error"],
              "per_class_error": {"linear": linear["per_class"], "mlp": net_mlp["per_class"]},
              "mlp_folds": net_mlp["folds"], "sparsity": sparsity(code, base=sparsity_base),
              "sparsity_base": sparsity_base, "sparsity_readings": sparsity_readings(code),
              "classifier": {"linear": classifier_description("linear"), "mlp": net_mlp["classifier"]},
              "seconds": round(linear["seconds"] + net_mlp["seconds"], 3)}
    write_json(os.path.join(run_dir, "analysis_%s.json" % split), result)
    return result


# ---------------------------------------------------------------- benchmark

def synthetic_codes(n, dim, seed=SEED, spread=1.0, separation=4.0):
    """N x D Gaussian clusters, one per digit (labels 0..9 in equal shares, shuffled)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    centres = rng.normal(size=(10, dim)) * separation
    code = centres[labels] + rng.normal(size=(n, dim)) * spread
    return code.astype(np.float32), labels


#: Model 4's forward steps at D=30 (layer, type, top, shape for one image), for the benchmark
_BENCH_STEPS = [("input", "Input", "data", (1, 1, 28, 28)), ("conv1", "Convolution", "conv1", (1, 26, 24, 24)),
                ("sig1en", "Sigmoid", "conv1", (1, 26, 24, 24)), ("pool1", "Pooling", "pool1", (1, 26, 12, 12)),
                ("conv2", "Convolution", "conv2", (1, 36, 8, 8)), ("sig2en", "Sigmoid", "conv2", (1, 36, 8, 8)),
                ("pool2", "Pooling", "pool2", (1, 36, 4, 4)), ("ip1encode", "InnerProduct", "ip1encode", (1, 250)),
                ("sig3en", "Sigmoid", "ip1encode", (1, 250)), ("ip2encode", "InnerProduct", "ip2encode", (1, 30)),
                ("ip1decode", "InnerProduct", "ip1decode", (1, 250)), ("sig3de", "Sigmoid", "ip1decode", (1, 250)),
                ("reshape", "Reshape", "ip1decodesh", (1, 250, 1, 1)),
                ("deconv2", "Deconvolution", "deconv2", (1, 36, 4, 4)), ("sig2de", "Sigmoid", "deconv2", (1, 36, 4, 4)),
                ("unpool2", "Unpooling", "unpool2", (1, 36, 8, 8)), ("deconv1", "Deconvolution", "deconv1", (1, 26, 12, 12)),
                ("sig1de", "Sigmoid", "deconv1", (1, 26, 12, 12)), ("unpool1", "Unpooling", "unpool1", (1, 26, 24, 24)),
                ("deconv1neur", "Deconvolution", "deconv1neur", (1, 1, 28, 28)),
                ("deconv1neursig", "Sigmoid", "deconv1neursig", (1, 1, 28, 28))]


def _bench_inputs(n, dim, seed):
    """(code, labels, images N x 28 x 28, reconstructions, what): PCA of the first ``n``
    MNIST test images (a linear auto-encoder: realistic code and reconstructions), or
    overlapping Gaussian clusters with noise images when MNIST cannot be read."""
    try:
        from . import data
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
    blobs of Model 4's shapes, a 50000-iteration log and the generated Model 4 prototxt
    (when generated/ has it). For ``caffe-cae bench``; returns a dict with the timings."""
    import h5py
    from . import REPO_ROOT

    own = work is None
    work = work or tempfile.mkdtemp(prefix="caffe-cae-bench-analyze-")
    try:
        run = os.path.join(work, "run")
        os.makedirs(run, exist_ok=True)
        code, labels, images, recon, what = _bench_inputs(n, dim, seed)
        rng = np.random.default_rng(seed)
        with h5py.File(os.path.join(work, "test.h5"), "w") as f:
            f["data"] = images.reshape(-1, 1, 28, 28)
            f["label"] = labels.astype(np.float32)
        with h5py.File(os.path.join(run, "codes.h5"), "w") as f:
            f["code"] = code
            f["label"] = labels.astype(np.float32)
            f["reconstruction"] = recon
        with h5py.File(os.path.join(run, "blobs_digit5.h5"), "w") as f:
            for i, (layer, kind, top, shape) in enumerate(_BENCH_STEPS):
                ds = f.create_dataset("blobs/%02d_%s" % (i, layer), data=rng.random(shape, dtype=np.float32))
                ds.attrs["blob"], ds.attrs["layer"], ds.attrs["layer_type"] = top, layer, kind
            f["params/conv1/0"] = rng.normal(size=(26, 1, 5, 5)).astype(np.float32)
            f["input"] = images[:1].reshape(1, 1, 28, 28)
        with open(os.path.join(run, "log.jsonl"), "w", encoding="utf-8") as f:
            for it in range(100, 50001, 100):
                f.write(json.dumps({"iter": it, "phase": "train", "loss": {"cross_entropy": 60 + 1e4 / it,
                                                                           "euclidean": 2 + 1e3 / it}}) + "\n")
        proto = os.path.join(REPO_ROOT or "", "generated", "modern", "model4_d%d_train_test.prototxt" % dim)
        files = {}
        if os.path.exists(proto):
            shutil.copy(proto, os.path.join(run, os.path.basename(proto)))
            files["train_test"] = os.path.basename(proto)
        write_json(os.path.join(run, "manifest.json"), {"net": "model4", "dim": dim, "seed": seed, "iterations": 50000,
                                                        "files": files})
        t0, cpu = time.time(), time.process_time()
        out = analyze_run(run, jobs=jobs, seed=seed, test_h5=os.path.join(work, "test.h5"),
                          diagram=bool(files) and shutil.which("dot") is not None, reference_cache=None, mlp=mlp)
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
