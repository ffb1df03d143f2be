"""``caffe-cae analyze``: Table 4's errors and sparsity, Section 5.1's compression, Figs. 2-11."""
import os
import sys

import click

from .options import fail, run_guarded

@click.command("analyze")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--folds", type=click.IntRange(min=2), default=10, show_default=True,
              help="Stratified cross-validation folds of the classifiers.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of folds, MLP weights, t-SNE, digit picks.")
@click.option("--jobs", type=click.IntRange(min=1), default=2, show_default=True,
              help="Parallel MLP folds and t-SNE threads.")
@click.option("--mlp", "classifier", type=click.Choice(["patternnet", "lbfgs", "none"]), default="patternnet",
              show_default=True, help="The MLP: MATLAB's patternnet + trainscg as the paper ran it, or "
                                      "scikit-learn's L-BFGS MLP trained to convergence (faster; overfits); "
                                      "none (only with --split train): the linear classifier alone.")
@click.option("--mlp-transfer", type=click.Choice(["tansig", "logsig"]), default="tansig", show_default=True,
              help="patternnet's hidden transfer function (MATLAB's default tansig; logsig: the logistic).")
@click.option("--mlp-epochs", type=click.IntRange(min=1), default=6000, show_default=True,
              help="patternnet's training epochs (the paper: 6000).")
@click.option("--sparsity-base", type=click.Choice(["max", "absmax"]), default="max", show_default=True,
              help="Eq. (2)'s threshold is t % of the code's largest element (max) or largest magnitude (absmax).")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True,
              help="Which codes: test (codes.h5, the paper's; every figure) or train (codes_train.h5 from "
                   "`extract --split train`: the errors and sparsity only, into analysis_train.json).")
@click.option("--test-h5", type=click.Path(dir_okay=False), default=None,
              help="Test images for the reconstruction figures [default: the run manifest's data.test.images].")
@click.option("--no-diagram", is_flag=True, help="Skip the graphviz net diagram.")
@click.option("--reference", is_flag=True,
              help="Also train the paper's 784-88-10 MLP on the raw test images once (up to an hour; cached in "
                   "--reference-cache) and add it to analysis.json as the reference row.")
@click.option("--reference-cache", type=click.Path(dir_okay=False), show_default=True,
              default=os.path.join("~", ".cache", "caffe-cae", "reference_mlp_784.json"),
              help="JSON cache of the raw-pixel reference result.")
def cli(run_dirs, folds, seed, jobs, classifier, mlp_transfer, mlp_epochs, sparsity_base, split, test_h5, no_diagram,
        reference, reference_cache):
    """Classify, measure and draw each RUN_DIR; write RUN_DIR/analysis.json and RUN_DIR/figures/."""
    from .. import paper as paper_lib
    from ..analysis import analyze_run as lib

    cache = os.path.expanduser(reference_cache)
    mlp = {"hidden_transfer": mlp_transfer, "epochs": mlp_epochs} if classifier == "patternnet" else None
    raw_paper = paper_lib.load()["mlp"]["raw_pixels"]["mlp_error"]

    def say(message):
        click.echo(message, err=True)

    if classifier == "none" and split == "test":
        fail("--mlp none: only with --split train (Table 4 on the test codes has both classifiers)")
    for run_dir in run_dirs:
        if split != "test":
            out = run_guarded(lib.classify_split, run_dir, split, folds=folds, seed=seed, jobs=jobs,
                              classifier=classifier, mlp=mlp, sparsity_base=sparsity_base, progress=say)
            click.echo("%s: %s D=%d, %d %s codes: linear %.2f %%, MLP %s, sparsity30 %.2f %%" % (
                os.path.join(run_dir, "analysis_%s.json" % split), out["net"], out["dim"], out["n"], split,
                out["linear_error"], "-" if out["mlp_error"] is None else "%.2f %%" % out["mlp_error"],
                out["sparsity"]["30"]))
            continue
        if reference:
            run_guarded(_reference, run_dir, test_h5, cache, folds, seed, jobs, classifier, mlp, raw_paper, say)
        out = run_guarded(lib.analyze_run, run_dir, folds=folds, seed=seed, jobs=jobs, test_h5=test_h5,
                          diagram=not no_diagram, reference_cache=cache, progress=say if sys.stderr.isatty() else None,
                          classifier=classifier, mlp=mlp, sparsity_base=sparsity_base)
        paper = out["paper"]

        def cell(ours, theirs):
            return "%.2f (paper %s)" % (ours, "-" if theirs is None else "%.2f" % theirs)

        sp = (paper.get("sparsity") or {}).get("30")
        click.echo("%s: %s D=%d linear %s, MLP %s %s, sparsity30 %s, compression %.1f %% (%g bytes); "
                   "%d figures in %.1f s" % (
                       os.path.join(run_dir, "analysis.json"), out["net"], out["dim"],
                       cell(out["linear_error"], paper.get("linear_error")), out["mlp_size"],
                       cell(out["mlp_error"], paper.get("mlp_error")), cell(out["sparsity"]["30"], sp),
                       out["compression"]["ratio_percent"], out["compression"]["total_bytes"],
                       len(out["figures"]), out["timings"]["total"]))


def _reference(run_dir, test_h5, cache, folds, seed, jobs, classifier, mlp, raw_paper, say):
    from ..analysis import measure, readers

    manifest = readers.read_manifest(os.path.abspath(run_dir))
    codes = readers.read_codes(os.path.abspath(run_dir))
    path = test_h5 or ((manifest.get("data") or {}).get("test") or {}).get("images")
    images = readers.read_test_images(path, len(codes["label"]), codes["label"])
    say("raw-pixel reference MLP 784-88-10 (%s) on %d images (%d folds), cached in %s"
        % (measure.classifier_tag(classifier, mlp), len(images), folds, cache))
    result = measure.raw_pixel_reference(images, codes["label"], cache=cache, folds=folds, seed=seed, jobs=jobs,
                                         classifier=classifier, mlp=mlp)
    say("reference: %.2f %% (paper %.2f %%)%s" % (result["error"], raw_paper, " (cached)" if result["cached"] else ""))
