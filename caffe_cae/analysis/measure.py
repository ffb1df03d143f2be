"""Table 4's and Section 5.1's numbers of a code: classification errors, sparsity, compression.

* ``classify_cv`` / ``linear_error`` / ``mlp_error``: the *average per-class error* of
  Table 4, mean over the classes of (1 - recall) in %, from 10-fold stratified
  cross-validation on the 10000 test codes. The per-class recalls come from the pooled
  out-of-fold predictions (one confusion matrix over all N codes). The classifiers are
  MATLAB's, as the paper called them (``caffe_cae.analysis.classify``): ``classify()``
  'linear' with uniform priors (refusing a singular pooled covariance, as MATLAB does) and
  ``patternnet`` trained by ``trainscg`` (D-H-10, H from ``paper.mlp_hidden``: 14/42/66 for
  D = 2/10/30, 88 for raw pixels; 6000 epochs, the best validation epoch kept). The
  ``lbfgs`` option is scikit-learn's L-BFGS MLP trained to convergence on the whole
  training fold (``lbfgs_mlp_predict``): faster, but it overfits where MATLAB stops early.
* ``raw_pixel_reference``: the same MLP 784-88-10 on raw pixels (the paper's value is
  ``paper.json``'s ``mlp.raw_pixels``), cached in a JSON file because it costs minutes to
  an hour.
* ``sparsity``: eq. (2), #{j : |c_j| <= eps}, as Section 5.1 applies it: the share in % of
  all N x D code elements whose magnitude is at most 10/20/30 % of the largest element of
  the whole code (``base='absmax'``: of the largest magnitude). ``sparsity_readings``
  also gives the older signed reading (c < t max c) for comparison.
* ``compression``: Section 5.1 by ``caffe_cae.inspect.compression`` (the one rule): 4 bytes
  per code element against a 784-byte image, plus for switch models (a MAX Pooling mask top
  consumed by an Unpooling layer, read from the run's prototxt by ``net_switches``)
  floor(log2(map positions)) bits per switch, as the paper counts them (9 and 6 bits for
  Model 3).
* ``code_losses``: the split's mean losses that ``extract`` stored with the codes.
"""
import json
import os
import shutil
import time
import warnings

import numpy as np

from .. import inspect as inspect_lib
from ..errors import CaeError
from ..files import write_json
from . import classify

FOLDS = 10
SEED = 0
THRESHOLDS = (10, 20, 30)
MLP_MAX_ITER = 500
CLASSIFIERS = ("linear", "patternnet", "lbfgs")
MLP_CLASSIFIERS = CLASSIFIERS[1:]
SPARSITY_BASES = ("max", "absmax")
REFERENCE_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "caffe-cae", "reference_mlp_784.json")


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
    returns (predictions, L-BFGS iterations used). Not what MATLAB did: see
    ``caffe_cae.analysis.classify``."""
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
    """Some folds' patternnets in one process, one thread (see ``caffe_cae.analysis.classify``).
    With ``fold_dir`` each fold's result is kept in ``fold_dir/fold<i>.json`` as it finishes, and a
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
    its settings, ``caffe_cae.analysis.classify.MLP_DEFAULTS``) or 'lbfgs' (``lbfgs_mlp_predict``).

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
    from .. import paper
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


# ---------------------------------------------------------------- sparsity, compression, losses

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
    """Section 5.1 for a code of ``dim`` floats plus ``switches`` ({mask: {"count", "positions"}}):
    ``caffe_cae.inspect.compression`` against a 784-byte image (image/code/switch/total bytes,
    the ratio in %)."""
    return inspect_lib.compression(dim, switches)


def net_switches(prototxt):
    """{mask top: {"count", "positions", "bits"}} of a net's pooling switches that an
    Unpooling layer consumes (empty for nets without switches), from ``caffe_cae.inspect``."""
    found = (inspect_lib.inspect_net(prototxt).get("compression") or {}).get("switches") or {}
    return {name: {"count": s["count"], "positions": s["positions"], "bits": s["bits"]} for name, s in found.items()}


def code_losses(attrs):
    """{loss name: mean} from the ``loss_*`` attributes of a codes file."""
    return {k[len("loss_"):]: v for k, v in attrs.items() if k.startswith("loss_")}
