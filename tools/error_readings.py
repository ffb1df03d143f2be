"""How much of the gap to the paper's error columns can the way of measuring explain?
(issue 12, item 5; the readings are in docs/reproduction.md.)

    .venv/bin/python tools/error_readings.py results/*/run1
    .venv/bin/python tools/error_readings.py --mlp-folds 5 [--raw-pixels data/mnist] results/model4_d30/run1

For each published run (its codes.h5 and analysis.json) it prints the linear classifier's
error under three readings, beside the paper's, with no training:

- ``cv``: the published value, 10-fold cross-validation (analysis.json), the paper's text;
- ``resub``: MATLAB's classify() trained and tested on all N codes (resubstitution): what a
  reading that evaluated on the samples the classifier saw would give;
- ``sokolova``: the published confusion matrix measured as Sokolova and Lapalme's "average
  error rate", the mean over classes of (fp + fn) / N, which is 2 / K of the overall error.

If ``resub`` is close to ``cv``, the linear rule does not overfit these codes, and the gap
lies in the codes, not in which samples were counted.

With ``--mlp-folds F`` it also trains the paper's MLP (patternnet, the published settings) on
the first F of the 10 folds and prints, averaged over them, its error on the held-out fold
(the published reading), on all the inputs train() was given (its own training, validation
and test division) and on all N samples: what a reading that let the fitted samples in would
give. ``--raw-pixels MNIST_DIR`` adds the same for the 784-88-10 net on the raw test images.
"""
import argparse
import json
import os

import h5py
import numpy as np

from caffe_cae import data
from caffe_cae import paper as paper_lib
from caffe_cae.analysis import classify, measure


def readings(code, labels, confusion):
    """{'resub': per-class error % of classify() on its own training set, 'sokolova': % from ``confusion``}."""
    code = np.asarray(code, dtype=np.float64).reshape(len(code), -1)
    labels = np.asarray(labels).astype(int).ravel()
    resub, _, _ = measure.per_class_error(labels, classify.matlab_classify(code, labels, code))
    confusion = np.asarray(confusion)
    wrong, n, k = confusion.sum() - np.trace(confusion), confusion.sum(), len(confusion)
    return {"resub": resub, "sokolova": 100.0 * 2.0 * wrong / (n * k)}


def mlp_readings(code, labels, folds):
    """Mean over the first ``folds`` folds of the patternnet's error % on {"held_out", "fold_inputs", "all"}."""
    from sklearn.model_selection import StratifiedKFold

    x = np.asarray(code, dtype=np.float64).reshape(len(code), -1)
    classes, y = np.unique(np.asarray(labels).astype(int).ravel(), return_inverse=True)
    splits = StratifiedKFold(n_splits=measure.FOLDS, shuffle=True, random_state=measure.SEED).split(x, y)
    hidden, settings = measure.mlp_hidden_size(x.shape[1]), classify.mlp_settings()
    sums = {"held_out": 0.0, "fold_inputs": 0.0, "all": 0.0}
    for i, (train, test) in zip(range(folds), splits):
        preds, _, _ = classify.train_patternnet(x[train], y[train], hidden, len(classes), [measure.SEED, i], settings,
                                                x[test])
        wrong_held, wrong_fold = np.sum(preds["held_out"] != y[test]), np.sum(preds["fold"] != y[train])
        sums["held_out"] += 100.0 * wrong_held / len(test)
        sums["fold_inputs"] += 100.0 * wrong_fold / len(train)
        sums["all"] += 100.0 * (wrong_held + wrong_fold) / len(y)
    return {k: v / folds for k, v in sums.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help="published run directories (codes.h5, analysis.json)")
    parser.add_argument("--mlp-folds", type=int, default=0, choices=range(0, measure.FOLDS + 1), metavar="F",
                        help="also the MLP's readings, over the first F folds (default 0: none)")
    parser.add_argument("--raw-pixels", metavar="MNIST_DIR", help="also the raw-pixel MLP's readings (with --mlp-folds)")
    args = parser.parse_args(argv)
    paper = paper_lib.load()
    if args.mlp_folds:
        print_mlp(args, paper)
    if not args.runs:
        return
    print("| run | linear % cv (ours) | resub | sokolova | paper |")
    print("| --- | --- | --- | --- | --- |")
    for run in args.runs:
        with open(os.path.join(run, "analysis.json"), encoding="utf-8") as handle:
            analysis = json.load(handle)
        with h5py.File(os.path.join(run, "codes.h5"), "r") as f:
            code, labels = f["code"][...], f["label"][...]
        r = readings(code, labels, analysis["confusion"]["linear"])
        theirs = paper["table4"][analysis["net"]][str(analysis["dim"])]["linear_error"]
        print("| %s d%d | %.2f | %.2f | %.2f | %.2f |" % (analysis["net"], analysis["dim"], analysis["linear_error"],
                                                        r["resub"], r["sokolova"], theirs))



def print_mlp(args, paper):
    print("| MLP, first %d folds | held-out %% (published reading) | train()'s inputs | all N | paper |" % args.mlp_folds)
    print("| --- | --- | --- | --- | --- |")
    rows = []
    if args.raw_pixels:
        images, labels = data.read_mnist(args.raw_pixels)["test"]
        rows.append(("raw pixels", np.asarray(images, np.float32).reshape(len(images), -1) / 255.0, labels,
                     paper["mlp"]["raw_pixels"]["mlp_error"]))
    for run in args.runs:
        with open(os.path.join(run, "analysis.json"), encoding="utf-8") as handle:
            analysis = json.load(handle)
        with h5py.File(os.path.join(run, "codes.h5"), "r") as f:
            rows.append(("%s d%d" % (analysis["net"], analysis["dim"]), f["code"][...], f["label"][...],
                         paper["table4"][analysis["net"]][str(analysis["dim"])]["mlp_error"]))
    for name, code, labels, theirs in rows:
        r = mlp_readings(code, labels, args.mlp_folds)
        print("| %s | %.2f | %.2f | %.2f | %.2f |" % (name, r["held_out"], r["fold_inputs"], r["all"], theirs), flush=True)


if __name__ == "__main__":
    main()
