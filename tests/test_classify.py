"""The paper's classifiers as MATLAB ran them (caffe_cae.analysis.classify): trainscg's SCG on problems
with known answers, patternnet's gradient, initialisation and best-validation epoch, and
classify()'s uniform priors and refusal of a singular covariance."""
import os
import numpy as np
import pytest
import torch

from caffe_cae.analysis import classify as lib
from caffe_cae.analysis import measure, scg
from caffe_cae.analysis.benchmark import synthetic_codes


def quadratic(n, seed=0, low=1.0, high=10.0):
    """F = 1 strictly convex quadratic 1/2 w'Aw - b'w with eigenvalues low..high, its minimiser."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    a = torch.tensor((q * np.linspace(low, high, n)) @ q.T)[None]
    b = torch.tensor(rng.normal(size=n))[None]

    def f(w):
        aw = torch.einsum("fij,fj->fi", a, w)
        return 0.5 * (w * aw).sum(1) - (b * w).sum(1), aw - b

    return f, torch.linalg.solve(a, b)


def test_scg_reaches_the_minimiser_of_a_quadratic_in_about_n_epochs():
    n = 10
    f, best = quadratic(n)
    errors = {}
    for epochs in (n - 2, n + 1):
        obj = scg.FunctionObjective(f, torch.zeros(1, n, dtype=torch.float64))
        out = scg.scg(obj, epochs, goal=-np.inf)
        assert out["stop"] == ["maximum epoch reached"] and out["epochs"] == [epochs]
        errors[epochs] = float((obj.w - best).abs().max())
    assert errors[n + 1] < 1e-8          # conjugate directions: done after about n steps
    assert errors[n - 2] > 1e-6          # and not before: this is not plain gradient descent


def test_scg_solves_a_batch_of_problems_independently():
    f1, best1 = quadratic(6, seed=1)
    f2, best2 = quadratic(6, seed=2, high=3.0)

    def both(w):
        (v1, g1), (v2, g2) = f1(w[:1]), f2(w[1:])
        return torch.cat([v1, v2]), torch.cat([g1, g2])

    obj = scg.FunctionObjective(both, torch.zeros(2, 6, dtype=torch.float64))
    scg.scg(obj, 20, goal=-np.inf)
    assert float((obj.w[0] - best1[0]).abs().max()) < 1e-8 and float((obj.w[1] - best2[0]).abs().max()) < 1e-8


def test_scg_stops_at_the_goal_and_at_min_grad():
    f, _ = quadratic(8)
    out = scg.scg(scg.FunctionObjective(f, torch.zeros(1, 8, dtype=torch.float64)), 100, goal=-0.01)
    assert out["stop"] == ["performance goal met"] and out["epochs"][0] < 8
    out = scg.scg(scg.FunctionObjective(f, torch.zeros(1, 8, dtype=torch.float64)), 100, goal=-np.inf, min_grad=1e-3)
    assert out["stop"] == ["minimum gradient reached"] and out["epochs"][0] < 20


class Validated(scg.FunctionObjective):
    """Training pulls w to a; validation prefers b: the path passes b's nearest point early."""

    def __init__(self, f, w, b):
        super().__init__(f, w)
        self.b = b

    def val_perf(self):
        return ((self.w - self.b) ** 2).sum(1)


def test_scg_returns_the_weights_of_the_best_validation_epoch_not_the_last():
    n = 10
    f, best = quadratic(n)
    early = scg.FunctionObjective(f, torch.zeros(1, n, dtype=torch.float64))
    scg.scg(early, 3, goal=-np.inf)
    target = early.w.clone()                  # validation prefers the iterate of epoch 3
    obj = Validated(f, torch.zeros(1, n, dtype=torch.float64), target)
    out = scg.scg(obj, 30, goal=-np.inf)
    b = out["best_epoch"][0]
    assert b == 3
    last_val = float(((obj.w - target) ** 2).sum())
    best_val = float(((out["best_w"] - target) ** 2).sum())
    assert best_val < last_val and out["vperf"][0] == pytest.approx(best_val)
    again = Validated(f, torch.zeros(1, n, dtype=torch.float64), target)
    scg.scg(again, b, goal=-np.inf)           # stopping at the best epoch gives those weights
    assert torch.equal(again.w, out["best_w"])


def patternnet_objective(transfer, seed=0, n=60, r=5, s=4, k=3):
    rng = np.random.default_rng(seed)
    x = torch.tensor(rng.uniform(-1, 1, size=(n, r)))
    y = torch.tensor(rng.integers(0, k, size=n))
    w = torch.tensor(rng.normal(size=(1, s * r + s + k * s + k)))
    return lib.PatternnetObjective(w, (s, r, k), x[:40], y[:40], x[40:], y[40:], transfer)


@pytest.mark.parametrize("transfer", ["tansig", "logsig"])
def test_patternnet_gradient_matches_finite_differences(transfer):
    obj = patternnet_objective(transfer)
    perf, grad = obj.start()
    # perf is the mean of -t log y over K x N elements
    _, logy, _ = obj._forward(obj.u)
    assert float(perf) == pytest.approx(float(-(obj.t_onehot * logy).sum()) / (3 * 40))
    w0 = obj.w.clone()
    numeric = torch.zeros_like(w0)
    for i in range(w0.shape[1]):
        for sign in (1, -1):
            probe = patternnet_objective(transfer)
            probe.w = w0.clone()
            probe.w[0, i] += sign * 1e-6
            probe.u = probe._net_input(probe.x, probe.w[0])
            numeric[0, i] += sign * float(probe.start()[0]) / 2e-6
    assert float((numeric - grad).abs().max()) < 1e-8
    # along a direction: the value, the slope and a move agree with a fresh evaluation there
    p = torch.tensor(np.random.default_rng(5).normal(size=w0.shape))
    obj.set_direction(p)
    t = torch.tensor([0.01], dtype=torch.float64)
    there = patternnet_objective(transfer)
    there.w = w0 + 0.01 * p
    there.u = there._net_input(there.x, there.w[0])
    there.uv = there._net_input(there.xv, there.w[0])
    v_there, g_there = there.start()
    assert float(obj.probe_value(t)) == pytest.approx(float(v_there), rel=1e-12)
    assert float(obj.probe_slope(t)) == pytest.approx(float((g_there * p).sum()), rel=1e-10)
    v_moved, g_moved = obj.move(t)
    assert float(v_moved) == pytest.approx(float(v_there), rel=1e-12)
    assert float((g_moved - g_there).abs().max()) < 1e-12
    assert float(obj.val_perf()) == pytest.approx(float(there.val_perf()), rel=1e-12)


def test_nguyen_widrow_initialisation_and_the_fold_preprocessing():
    rng = np.random.default_rng(0)
    train = np.column_stack([rng.normal(size=1000), np.full(1000, 7.0), rng.uniform(3, 5, size=1000)])
    prep = lib._prepare_fold(train, train[:5], np.random.default_rng(1), 10, (0.7, 0.15, 0.15), "tansig")
    assert prep["inputs"] == 2                                   # removeconstantrows dropped column 1
    assert np.allclose(prep["x"][:, 1], 0) and np.allclose(prep["x"][:, [0, 2]].min(0), -1)
    assert np.allclose(prep["x"][:, [0, 2]].max(0), 1)           # mapminmax to [-1, 1] on the fold
    assert (len(prep["train"]), len(prep["val"])) == (700, 150)  # dividerand 70/15/15
    assert not set(prep["train"]) & set(prep["val"])
    magnitude = 2 * 0.7 * 10 ** (1 / 2)                          # tansig's active range is [-2, 2]
    assert np.allclose(np.linalg.norm(prep["w1"], axis=1), magnitude) and np.all(prep["w1"][:, 1] == 0)
    assert np.allclose(np.abs(prep["b1"]), magnitude * np.abs(np.linspace(-1, 1, 10)))
    logsig = lib._prepare_fold(train, train[:5], np.random.default_rng(1), 10, (0.7, 0.15, 0.15), "logsig")
    assert np.allclose(np.linalg.norm(logsig["w1"], axis=1), 2 * magnitude)   # logsig's is [-4, 4]


def test_patternnet_keeps_its_best_validation_epoch_when_it_overfits():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 20))
    y = rng.integers(0, 4, size=200)                             # pure noise: validation only gets worse
    preds, info = lib.patternnet_folds([(x, y, x[:10])], 30, 4, settings={"epochs": 200})
    # it fits its 140 training samples (to the goal of 1e-10, which stops it) ...
    assert info[0]["stop"] in ("performance goal met", "maximum epoch reached") and info[0]["train_perf"] < 1e-3
    # ... and hands back an early epoch, the one where validation was best
    assert info[0]["best_epoch"] < info[0]["epochs"] / 2
    assert preds[0].shape == (10,) and set(preds[0]) <= set(range(4))


def test_patternnet_is_deterministic_per_fold_whatever_the_grouping():
    code, labels = synthetic_codes(600, 3, seed=2, spread=1.0, separation=1.5)
    folds = [(code[:500], labels[:500], code[500:]), (code[100:], labels[100:], code[:100])]
    together, _ = lib.patternnet_folds(folds, 8, 10, settings={"epochs": 30})
    alone, _ = lib.patternnet_folds(folds[1:], 8, 10, settings={"epochs": 30}, fold_ids=[1])
    assert np.array_equal(together[1], alone[0])


def test_separated_clusters_give_near_zero_error_random_codes_about_ninety():
    code, labels = synthetic_codes(2000, 10, seed=3, spread=1.0, separation=10.0)
    out = measure.classify_cv(code, labels, "patternnet", jobs=2, mlp={"epochs": 100})
    assert out["error"] < 0.5 and out["hidden"] == 42 and len(out["folds"]) == 10
    assert [f["fold"] for f in out["folds"]] == list(range(10)) and all(f["epochs"] <= 100 for f in out["folds"])
    rng = np.random.default_rng(7)
    noise = rng.normal(size=(2000, 2))
    labels = rng.permutation(np.arange(2000) % 10)
    assert 84.0 < measure.mlp_error(noise, labels, jobs=2, mlp={"epochs": 100}) < 96.0


def test_classify_uses_uniform_priors_not_the_class_frequencies():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0.0, 1.0, size=(900, 1)), rng.normal(2.0, 1.0, size=(100, 1))])
    y = np.array([0] * 900 + [1] * 100)
    x[:900] -= x[:900].mean() - 0.0                              # class means exactly 0 and 2
    x[900:] -= x[900:].mean() - 2.0
    # just past the midpoint: class 1 under uniform priors; empirical priors (0.9/0.1) would say 0
    assert list(lib.matlab_classify(x, y, np.array([[1.05], [0.95], [1.5]]))) == [1, 0, 1]


def test_classify_is_the_pooled_gaussian_rule():
    code, labels = synthetic_codes(3000, 5, seed=2, spread=1.0, separation=1.0)
    train, test = slice(0, 2000), slice(2000, None)
    ours = lib.matlab_classify(code[train], labels[train], code[test])
    x, y = code[train].astype(float), labels[train]
    means = np.stack([x[y == k].mean(0) for k in range(10)])
    pooled = sum((x[y == k] - means[k]).T @ (x[y == k] - means[k]) for k in range(10)) / (len(x) - 10)
    diff = code[test].astype(float)[:, None, :] - means[None]
    scores = -np.einsum("nkd,de,nke->nk", diff, np.linalg.inv(pooled), diff)
    assert np.array_equal(ours, np.argmax(scores, axis=1))
    assert 0.02 < np.mean(ours != labels[test]) < 0.9           # a real, imperfect problem


def test_classify_refuses_a_singular_pooled_covariance_naming_the_dimension():
    code, labels = synthetic_codes(500, 3, seed=4, separation=10.0)
    dead = np.column_stack([code[:, :2], np.zeros(len(code)), code[:, 2:]])
    with pytest.raises(lib.SingularCovariance, match="code dimension\\(s\\) 2 constant"):
        lib.matlab_classify(dead, labels, dead[:5])
    with pytest.raises(lib.SingularCovariance, match="code dimension\\(s\\) 2 constant"):
        lib.check_classify(dead, labels)
    twin = np.column_stack([code, code[:, 0] * 2.0])
    with pytest.raises(lib.SingularCovariance, match="rank 3 of 4"):
        lib.matlab_classify(twin, labels, twin[:5])


def test_bad_mlp_settings_are_clear_errors():
    with pytest.raises(lib.CaeError, match="--mlp-transfer: expected tansig or logsig"):
        lib.mlp_settings(hidden_transfer="relu")
    with pytest.raises(lib.CaeError, match="unknown"):
        lib.mlp_settings(momentum=0.9)


def test_error_readings_tool_resubstitution_and_the_average_error_rate(tmp_path, capsys):
    """tools/error_readings.py (docs/reproduction.md): resubstitution on separated clusters is
    0 %, Sokolova's average error rate is 2 / K of the overall error, and the table prints."""
    import json
    import sys

    import h5py

    from caffe_cae import REPO_ROOT
    sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
    import error_readings

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 50)
    code = rng.normal(size=(500, 3)) * 0.01 + np.eye(10)[labels][:, :3] * 5 + labels[:, None] * 3.0
    confusion = np.diag([48] * 10)
    confusion[0, 1] = confusion[2, 3] = 2          # 4 of 484 wrong
    r = error_readings.readings(code, labels, confusion)
    assert r["resub"] == 0.0 and abs(r["sokolova"] - 100 * 2 * 4 / (484 * 10)) < 1e-12
    run = tmp_path / "run1"
    run.mkdir()
    with h5py.File(run / "codes.h5", "w") as f:
        f["code"], f["label"] = code.astype(np.float32), labels.astype(np.float32)
    (run / "analysis.json").write_text(json.dumps({"net": "model4", "dim": 10, "linear_error": 0.8,
                                                   "confusion": {"linear": confusion.tolist()}}))
    error_readings.main([str(run)])
    assert "| model4 d10 | 0.80 | 0.00 | 0.17 | 5.06 |" in capsys.readouterr().out


def test_error_readings_tool_mlp_readings(tmp_path, capsys):
    """tools/error_readings.py --mlp-folds: the patternnet's error on the held-out fold, on the
    inputs train() saw and on all N, which is their count-weighted mean."""
    import json
    import sys

    import h5py

    from caffe_cae import REPO_ROOT
    sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
    import error_readings

    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(10), 50)
    code = rng.normal(size=(500, 4)) + rng.normal(size=(10, 4))[labels] * 2.0  # overlapping clusters
    r = error_readings.mlp_readings(code, labels, 2)
    assert 0 < r["fold_inputs"] < 50 and 0 < r["held_out"] < 50
    assert abs(r["all"] - (50 * r["held_out"] + 450 * r["fold_inputs"]) / 500) < 1e-9
    run = tmp_path / "run1"
    run.mkdir()
    with h5py.File(run / "codes.h5", "w") as f:
        f["code"], f["label"] = code.astype(np.float32), labels.astype(np.float32)
    (run / "analysis.json").write_text(json.dumps({"net": "model4", "dim": 10, "linear_error": 1.0,
                                                   "confusion": {"linear": np.diag([50] * 10).tolist()}}))
    error_readings.main(["--mlp-folds", "1", str(run)])
    out = capsys.readouterr().out
    assert "| MLP, first 1 folds |" in out and "| model4 d10 |" in out and out.rstrip().endswith("| 5.06 |")
