"""How much of the gap to the paper's error columns can the way of measuring explain?
(issue 12, item 5; the readings are in docs/reproduction.md.)

    .venv/bin/python tools/error_readings.py results/*/run1

For each published run (its codes.h5 and analysis.json) it prints the linear classifier's
error under three readings, beside the paper's, with no training:

- ``cv``: the published value, 10-fold cross-validation (analysis.json), the paper's text;
- ``resub``: MATLAB's classify() trained and tested on all N codes (resubstitution): what a
  reading that evaluated on the samples the classifier saw would give;
- ``sokolova``: the published confusion matrix measured as Sokolova and Lapalme's "average
  error rate", the mean over classes of (fp + fn) / N, which is 2 / K of the overall error.

If ``resub`` is close to ``cv``, the linear rule does not overfit these codes, and the gap
lies in the codes, not in which samples were counted.
"""
import argparse
import json
import os

import h5py
import numpy as np

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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="published run directories (codes.h5, analysis.json)")
    args = parser.parse_args(argv)
    paper = paper_lib.load()
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


if __name__ == "__main__":
    main()
