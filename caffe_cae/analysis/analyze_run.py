"""The paper's analysis of one run (Sections 4.2, 4.3 and 5.1): numbers and figures.

``analyze_run(run_dir)`` reads ``manifest.json``, ``codes.h5`` (test split),
``blobs_digit5.h5``, ``log.jsonl`` and the run's prototxt (``readers``), checks every input
before the slow parts, and writes ``RUN_DIR/analysis.json`` (``measure``: Table 4's errors
and sparsity, Section 5.1's compression) and ``RUN_DIR/figures/*.png|svg`` (``figures``,
``netdraw``), each written through a temporary file, then renamed. ``classify_split`` does
Table 4's columns for another split's codes (no figures).
"""
import os
import time

import numpy as np

from ..errors import CaeError
from ..files import write_json
from . import classify
from .figures import (TSNE_PARAMS, embed_2d, fig_blobs, fig_code_map, fig_filters, fig_learning_curves,
                      fig_recon_grid, fig_reconstructions, first_layer, pick_digits, save_figure)
from .measure import (FOLDS, MLP_CLASSIFIERS, REFERENCE_CACHE, SEED, _check_folds, classifier_description,
                      classifier_tag, classify_cv, code_losses, compression, mlp_hidden_size, net_switches,
                      raw_pixel_reference, sparsity, sparsity_readings)
from .netdraw import dot_binary, draw_net
from .readers import CODE_FILES, read_blobs, read_codes, read_log, read_manifest, read_test_images, run_prototxt


def paper_row(net, dim):
    """The paper's Table 4 values and Section 5.1 compression for (net, dim); None where absent."""
    from .. import paper
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
    (``caffe_cae.analysis.classify.MLP_DEFAULTS``); ``sparsity_base``: see ``sparsity``."""
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
    result["losses"] = code_losses(codes["attrs"])

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
