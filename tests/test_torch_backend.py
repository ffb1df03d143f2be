"""The PyTorch backend against the real Caffe engine.

For every net at D=2, starting from the same .caffemodel (written by Caffe after its own
fillers): the forward blobs and the parameter gradients of torch and Caffe agree within
1e-5; SGD on the same batches (tiny HDF5 data, 250 training rows, so batches of 100 wrap
around and span the end of the file): the loss curves of the first 10 iterations and the
weights after 10 iterations (Model 5: 5) agree within 1e-4 for every net; after 100 iterations the loss
curves and the weights agree within 1e-4 for the nets whose float32 training is stable
(deep_ae, Models 1-4); a run resumed in torch from Caffe's iteration-50 .solverstate and one
resumed in Caffe from torch's end where the uninterrupted run ends; Caffe loads torch's
.caffemodel and computes torch's forward pass.

CHAOTIC cases (Model 5, Siamese, the momentum/iter_size variant): there float32 rounding
differences grow by orders of magnitude within 100 iterations (Model 5's loss swings
547 -> 646 -> 280 in its first iterations), so two correct float32 implementations cannot
agree to 1e-4 at iteration 100: torch against itself (im2col instead of oneDNN kernels, or
initial weights moved by one float32 ulp) differs as much as torch against Caffe. For them
the 100-iteration check is that torch-vs-Caffe is within 3x (floor 1e-4) of that spread of
torch against itself, i.e. as close as two float32 runs get.

Relative error of an array ``a`` (torch) against ``b`` (Caffe): ``||a - b||_2 / ||b||_2``
(denominator floored at 1e-30), per blob, per parameter blob, per loss curve. (The
max-norm version, ``max|a - b| / max|b|``, is printed too; it stays below 1e-5 for every net
but Model 5, whose tanh bottleneck amplifies float32 rounding: there Caffe itself differs from
a float64 evaluation by ~5e-6 and the max-norm reaches ~1.6e-5.)

Engine tests: skipped without an engine or PyTorch, FAIL under CAFFE_CAE_REQUIRE_ENGINE=1.
"""
import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: no spinning on a busy CPU

import h5py
import numpy as np
import pytest

from caffe_cae import REPO_ROOT, caffemodel
from caffe_cae.data import write_tiny
from caffe_cae.errors import CaeError
from caffe_cae.schema import parse_net, parse_solver, to_text

from engine_support import SCRIPTS, require_engine, require_torch, run_json

NETS = ["deep_ae", "model1", "model2", "model3", "model4", "model5", "siamese"]
ITERS = 100
HALF = 50
FWD_TOL = 1e-5
#: Model 5's encoder gradients sit at the float32 floor of its tanh D = 2 bottleneck: every
#: encoder gradient differs from Caffe's by about the same 8e-6..1e-5 (L2) while its decoder
#: gradients agree to 1e-7..5e-7, i.e. the rounding enters at the code and is amplified
#: upstream. Measured 1.013e-5 (conv2 bias) against the engine built on a 2-core AMD EPYC
#: (2026-12-02), under 1e-5 on the Intel Xeon machine before; the bound is the float32 floor
#: with a factor of 2, and the first-iterations test below constrains Model 5 further.
FWD_TOL_AT = {"model5": 2e-5}
SGD_TOL = 1e-4
EARLY = 10
#: Model 5's encoder is that sensitive from the start: its losses are compared over 5 iterations,
#: its weights after 5 against torch's own float32 spread (see test_sgd_100_iterations_equal_caffe)
EARLY_AT = {"model5": 5}
#: cases whose float32 SGD trajectories diverge chaotically (see the module docstring)
CHAOTIC = {"model5", "siamese", "variant"}
#: Model 5 is compared after each of its first iterations, where float32 runs are still close
#: (see test_model5_first_iterations_equal_caffe)
MODEL5_FIRST = (1, 2, 3)
MODEL5_TOL = 1e-3
#: nets also checked for Caffe resuming from torch's .solverstate
CAFFE_RESUMES = ["model3", "model4"]
#: a solver variant exercising momentum, iter_size, weight decay and a decaying lr policy
VARIANT = {"net": "model2", "momentum": 0.9, "lr_policy": "inv", "gamma": 0.001, "power": 0.75,
           "iter_size": 2, "weight_decay": 0.005, "base_lr": 0.01}


def need_torch():
    require_torch().set_num_threads(1)


def rel_err(a, b):
    """||a - b||_2 / ||b||_2 (the equality measure of these tests)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.linalg.norm(a - b) / max(float(np.linalg.norm(b)), 1e-30))


def max_err(a, b):
    """max|a - b| / max|b| (printed for information)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if not a.size:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def gen(*parts):
    return os.path.join(REPO_ROOT, "generated", "modern", *parts)


def write_solver(work, key, net, **changes):
    """A solver for ``net``'s D=2 train_test with test/display/snapshot schedules off."""
    sp = parse_solver(gen("%s_d2_solver.prototxt" % net))
    sp.net = gen("%s_d2_train_test.prototxt" % net)
    sp.max_iter = ITERS
    sp.display = 0
    sp.test_interval = 1000000
    sp.test_initialization = False
    sp.snapshot = 0
    sp.random_seed = 1
    sp.snapshot_prefix = os.path.join(work, "snap", key, "caffe")
    for field, value in changes.items():
        setattr(sp, field, value)
    os.makedirs(os.path.join(work, "snap", key), exist_ok=True)
    path = os.path.join(work, "%s_solver.prototxt" % key)
    with open(path, "w") as f:
        f.write(to_text(sp))
    return path


def run_caffe(eng, work, tasks, name):
    path = os.path.join(work, name + ".json")
    with open(path, "w") as f:
        json.dump(tasks, f)
    return run_json(eng, [eng.python, os.path.join(SCRIPTS, "torch_equality.py"), path], cwd=work,
                    timeout=3600)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    need_torch()
    return caffe_setup(require_engine(), str(tmp_path_factory.mktemp("torch_eq")))


def caffe_setup(eng, work):
    """Caffe's half, run once: init weights, first-batch forward/backward, 100 SGD iterations."""
    write_tiny(os.path.join(work, "data", "hdf5"), n=250, n_test=150)
    cases = {}
    tasks = []
    variant = {k: v for k, v in VARIANT.items() if k != "net"}
    # the nets with plain SGD (momentum 0): the default momentum 0.9 amplifies float32 rounding
    # over 100 iterations past SGD_TOL (model2: 1.3e-4); momentum is the variant's
    for key, net, changes in [(n, n, {"momentum": 0.0}) for n in NETS] + [("variant", VARIANT["net"], variant)]:
        solver = write_solver(work, key, net, **changes)
        d = os.path.join(work, "snap", key)
        case = {"net": net, "solver": solver, "dir": d, "init": os.path.join(d, "init.caffemodel"),
                "caffe_final": os.path.join(d, "caffe_final.caffemodel"),
                "caffe_sgd": os.path.join(d, "caffe_sgd.h5"), "fwd": os.path.join(d, "caffe_fwd.h5")}
        cases[key] = case
        tasks.append({"kind": "init", "solver": solver, "out": case["init"]})
        if key != "variant":
            tasks.append({"kind": "fwdbwd", "net": gen("%s_d2_train_test.prototxt" % net),
                          "weights": case["init"], "out": case["fwd"]})
        first = list(MODEL5_FIRST) if key == "model5" else []
        tasks.append({"kind": "sgd", "solver": solver, "weights": case["init"], "iters": ITERS,
                      "snapshot_at": first + [5, EARLY, HALF], "out": case["caffe_sgd"], "final": case["caffe_final"]})
    report = run_caffe(eng, work, tasks, "caffe_run1")
    return {"eng": eng, "work": work, "cases": cases, "seconds": report["seconds"]}


def torch_forward(case, work, weights):
    from caffe_cae.backends.torch_net import TorchNet
    net = TorchNet(parse_net(gen("%s_d2_train_test.prototxt" % case["net"])), "train", cwd=work)
    net.set_weights(caffemodel.read_caffemodel(weights), source=weights)
    net.zero_grad()
    blobs, _ = net.forward_backward()
    return net, {k: v.detach().numpy() for k, v in blobs.items()}


@pytest.mark.parametrize("key", NETS)
def test_forward_and_gradients_equal_caffe(setup, key):
    case = setup["cases"][key]
    net, blobs = torch_forward(case, setup["work"], case["init"])
    worst, worst_max = {}, {}
    with h5py.File(case["fwd"], "r") as f:
        caffe_blobs = {k: f["blobs"][k][()] for k in f["blobs"]}
        assert set(blobs) <= set(caffe_blobs), set(blobs) - set(caffe_blobs)
        pairs = [("blob " + name, value, caffe_blobs[name].reshape(value.shape)) for name, value in blobs.items()]
        pairs += [("grad %s/%d" % (layer, i), t.grad.numpy(), f["diffs/%s/%d" % (layer, i)][()])
                  for layer, tensors in net.params.items() for i, t in enumerate(tensors)]
    for name, a, b in pairs:
        worst[name] = rel_err(a, b)
        worst_max[name] = max_err(a, b)
    name = max(worst, key=worst.get)
    name_max = max(worst_max, key=worst_max.get)
    print("%s: relative error (L2) max %.2e (%s); max-norm %.2e (%s); %d arrays"
          % (key, worst[name], name, worst_max[name_max], name_max, len(worst)))
    tol = FWD_TOL_AT.get(key, FWD_TOL)
    assert worst[name] <= tol, {k: v for k, v in worst.items() if v > tol}


def torch_sgd(case, work, iters, restore=None, skip=0, snapshot_at=(), onednn=True, prefix="torch", ulp=False):
    """Torch SGD from Caffe's initial weights (``ulp``: each initial weight moved by one float32
    ulp up or down at random, the smallest change a float32 implementation can make)."""
    from caffe_cae.backends.torch_solver import TorchSolver
    import torch
    solver = TorchSolver(case["solver"], cwd=work, test_nets=False, onednn=onednn)
    if restore:
        solver.restore(restore)
        solver.net.skip_batches(skip)
    else:
        solver.load_weights(case["init"])
    if ulp:
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in solver.net.learnable:
                up = torch.rand(p.shape, generator=gen) < 0.5
                p.copy_(torch.nextafter(p, torch.where(up, torch.inf, -torch.inf)))
    curves = {top: [] for top in solver.net.losses}
    for _ in range(iters):
        solver.step(1)
        for top, value in solver.losses.items():
            curves[top].append(value)
        if solver.iter in snapshot_at:
            solver.snapshot(os.path.join(case["dir"], prefix))
    return solver, curves


def compare_weights(weights, reference_path):
    ref = dict(caffemodel.read_caffemodel(reference_path))
    errs = {}
    for layer, arrays in weights:
        for i, a in enumerate(arrays):
            errs["%s/%d" % (layer, i)] = rel_err(a, ref[layer][i].reshape(a.shape))
    return errs


@pytest.mark.parametrize("key", NETS + ["variant"])
def test_sgd_100_iterations_equal_caffe(setup, key):
    case = setup["cases"][key]
    early = EARLY_AT.get(key, EARLY)
    solver, curves = torch_sgd(case, setup["work"], ITERS, snapshot_at=(early, HALF))
    solver.save_weights(os.path.join(case["dir"], "torch_final.caffemodel"))
    with h5py.File(case["caffe_sgd"], "r") as f:
        caffe_curves = {k: f["loss"][k][()] for k in f["loss"]}
    assert set(curves) == set(caffe_curves)
    early_loss = max(max_err(np.asarray(curves[t][:early]) / caffe_curves[t][:early], 1.0) for t in curves)
    loss_err = max(rel_err(curves[t], caffe_curves[t]) for t in curves)
    early_w = compare_weights(caffemodel.read_caffemodel(os.path.join(case["dir"], "torch_iter_%d.caffemodel" % early)),
                              os.path.join(case["dir"], "caffe_iter_%d.caffemodel" % early))
    w_err = compare_weights(solver.net.get_weights(), case["caffe_final"])
    worst = max(w_err, key=w_err.get)
    print("%s: first %d iterations: losses max rel %.2e, weights max rel %.2e; %d iterations: loss curves %.2e, "
          "weights max rel %.2e (%s)" % (key, early, early_loss, max(early_w.values()), ITERS, loss_err,
                                         w_err[worst], worst))
    assert early_loss <= SGD_TOL
    for top in curves:  # the runs learn: later losses below the first ones
        assert np.mean(curves[top][-10:]) < np.mean(curves[top][:10]), top
    if key not in CHAOTIC:
        assert max(early_w.values()) <= SGD_TOL, {k: v for k, v in early_w.items() if v > SGD_TOL}
        assert loss_err <= SGD_TOL
        assert w_err[worst] <= SGD_TOL, {k: v for k, v in w_err.items() if v > SGD_TOL}
        return
    # torch's own float32 spread: the largest distance to a run with the im2col kernels and to
    # a run whose initial weights differ by one ulp
    self_err = self_early = 0.0
    for name, kwargs in (("torch_im2col", {"onednn": False}), ("torch_ulp", {"ulp": True})):
        other, _ = torch_sgd(case, setup["work"], ITERS, snapshot_at=(early,), prefix=name, **kwargs)
        err = max(rel_err(a, b) for (_, xs), (_, ys) in zip(other.net.get_weights(), solver.net.get_weights())
                  for a, b in zip(xs, ys))
        err_early = max(compare_weights(caffemodel.read_caffemodel(os.path.join(case["dir"], "torch_iter_%d.caffemodel"
                                                                                % early)),
                                        os.path.join(case["dir"], "%s_iter_%d.caffemodel" % (name, early))).values())
        print("%s: chaotic: torch vs %s after %d iterations: %.2e, after %d: %.2e"
              % (key, name, early, err_early, ITERS, err))
        self_err, self_early = max(self_err, err), max(self_early, err_early)
    if key in EARLY_AT:  # chaotic from the start: weights within torch's own float32 spread
        assert max(early_w.values()) <= 3 * max(self_early, SGD_TOL), (max(early_w.values()), self_early)
    else:
        assert max(early_w.values()) <= SGD_TOL, {k: v for k, v in early_w.items() if v > SGD_TOL}
    assert w_err[worst] <= 3 * max(self_err, SGD_TOL), (w_err[worst], self_err)


def test_model5_first_iterations_equal_caffe(setup):
    """Model 5 in torch against Caffe over its first iterations, with a bound that can fail.

    After 100 iterations two float32 runs of Model 5 are as far apart as unrelated weights (see
    the module docstring), so the chaotic check above cannot tell a wrong implementation from a
    right one. Over the first iterations they are still close. From Caffe's initial weights,
    on the same batches, this compares what training did: the update ``w_k - w_0`` of every
    parameter blob after iteration k in torch against Caffe's (relative error, the largest over
    the blobs), for k in MODEL5_FIRST, and each loss of those iterations.

    Measured here (CPU, oneDNN kernels, plain SGD): update errors 4.0e-5, 6.6e-5, 1.7e-4 after
    iterations 1, 2, 3 (then 7.2e-4 and 5.0e-3 after 4 and 5: float32 rounding grows 4-7x per
    iteration, hence three), losses within 1e-4. MODEL5_TOL = 1e-3 leaves a 6x margin. The
    updates are tiny beside the weights (2e-4 of their norm for some blobs), so the weights
    themselves would hide a wrong update; the updates do not: Caffe's own update shuffled within
    each blob (an unrelated update of the same scale) is 1.6 away, a learning rate 10 % off is
    0.1 away - both far outside the bound, as the control below checks.
    """
    case = setup["cases"]["model5"]
    last = max(MODEL5_FIRST)
    _, curves = torch_sgd(case, setup["work"], last, snapshot_at=MODEL5_FIRST, prefix="torch_first")
    with h5py.File(case["caffe_sgd"], "r") as f:
        caffe_curves = {k: f["loss"][k][:last] for k in f["loss"]}
    loss_errs = {top: max(abs(a / b - 1.0) for a, b in zip(curves[top], caffe_curves[top])) for top in curves}
    init = caffemodel.read_caffemodel(case["init"])

    def update(path):
        after = dict(caffemodel.read_caffemodel(path))
        return [(layer, [b - a for a, b in zip(arrays, after[layer])]) for layer, arrays in init]

    def update_err(mine, theirs):
        return max(rel_err(a, b) for (_, xs), (_, ys) in zip(mine, theirs) for a, b in zip(xs, ys))

    errs = {k: update_err(update(os.path.join(case["dir"], "torch_first_iter_%d.caffemodel" % k)),
                          update(os.path.join(case["dir"], "caffe_iter_%d.caffemodel" % k)))
            for k in MODEL5_FIRST}
    caffe_update = update(os.path.join(case["dir"], "caffe_iter_%d.caffemodel" % last))
    rng = np.random.default_rng(0)
    shuffled = [(layer, [rng.permutation(d.ravel()).reshape(d.shape) for d in arrays]) for layer, arrays in caffe_update]
    scaled = [(layer, [1.1 * d for d in arrays]) for layer, arrays in caffe_update]
    controls = {"unrelated": update_err(shuffled, caffe_update), "lr+10%": update_err(scaled, caffe_update)}
    print("model5: first iterations: updates max rel %s; losses max rel %s; controls %s"
          % (", ".join("%d: %.2e" % kv for kv in sorted(errs.items())),
             ", ".join("%s %.2e" % kv for kv in sorted(loss_errs.items())),
             ", ".join("%s %.3g" % kv for kv in sorted(controls.items()))))
    assert min(controls.values()) > 50 * MODEL5_TOL, controls  # the bound tells wrong updates apart
    assert max(loss_errs.values()) <= SGD_TOL, loss_errs
    assert max(errs.values()) <= MODEL5_TOL, errs


@pytest.mark.parametrize("key", NETS)
def test_torch_resumes_caffe_solverstate(setup, key):
    case = setup["cases"][key]
    state = os.path.join(case["dir"], "caffe_iter_%d.solverstate" % HALF)
    if key in CHAOTIC:  # the restored state itself must be Caffe's, exactly
        solver, _ = torch_sgd(case, setup["work"], 0, restore=state, skip=HALF)
        assert solver.iter == HALF
        errs = compare_weights(solver.net.get_weights(), os.path.join(case["dir"], "caffe_iter_%d.caffemodel" % HALF))
        assert max(errs.values()) == 0.0
        history = caffemodel.read_solverstate(state)["history"]
        assert all(np.array_equal(h.detach().numpy().ravel(), a.ravel()) for h, a in zip(solver.history, history))
        return
    solver, _ = torch_sgd(case, setup["work"], ITERS - HALF, restore=state, skip=HALF)
    assert solver.iter == ITERS
    w_err = compare_weights(solver.net.get_weights(), case["caffe_final"])
    assert max(w_err.values()) <= SGD_TOL, {k: v for k, v in w_err.items() if v > SGD_TOL}


@pytest.fixture(scope="module")
def caffe_run2(setup):
    """Caffe's second half: forward from torch's .caffemodel; resume from torch's .solverstate."""
    tasks = []
    for key in NETS:
        case = setup["cases"][key]
        final = os.path.join(case["dir"], "torch_final.caffemodel")
        if not os.path.exists(final):
            pytest.fail("%s missing: test_sgd_100_iterations_equal_caffe[%s] did not run" % (final, key))
        tasks.append({"kind": "fwdbwd", "net": gen("%s_d2_train_test.prototxt" % case["net"]),
                      "weights": final, "out": os.path.join(case["dir"], "caffe_fwd_torchmodel.h5")})
        if key in CAFFE_RESUMES:
            tasks.append({"kind": "sgd", "solver": case["solver"], "weights": None,
                          "restore": os.path.join(case["dir"], "torch_iter_%d.solverstate" % HALF),
                          "skip": HALF, "iters": ITERS - HALF, "snapshot_at": None,
                          "out": os.path.join(case["dir"], "caffe_resumed.h5"),
                          "final": os.path.join(case["dir"], "caffe_resumed.caffemodel")})
    return run_caffe(setup["eng"], setup["work"], tasks, "caffe_run2")


@pytest.mark.parametrize("key", NETS)
def test_caffe_loads_torch_caffemodel(setup, caffe_run2, key):
    case = setup["cases"][key]
    final = os.path.join(case["dir"], "torch_final.caffemodel")
    _, blobs = torch_forward(case, setup["work"], final)
    with h5py.File(os.path.join(case["dir"], "caffe_fwd_torchmodel.h5"), "r") as f:
        errs = {name: rel_err(v, f["blobs"][name][()].reshape(v.shape)) for name, v in blobs.items()}
    assert max(errs.values()) <= FWD_TOL, {k: v for k, v in errs.items() if v > FWD_TOL}


@pytest.mark.parametrize("key", CAFFE_RESUMES)
def test_caffe_resumes_torch_solverstate(setup, caffe_run2, key):
    case = setup["cases"][key]
    w_err = compare_weights(caffemodel.read_caffemodel(os.path.join(case["dir"], "caffe_resumed.caffemodel")),
                            case["caffe_final"])
    assert max(w_err.values()) <= SGD_TOL, {k: v for k, v in w_err.items() if v > SGD_TOL}


# ------------------------------------------------------------------ torch only (no engine)

def test_unsupported_layer_is_a_clear_error():
    need_torch()
    from caffe_cae.backends.torch_net import TorchNet
    net = parse_net('name: "x" layer { name: "in" type: "Input" top: "data" '
                    'input_param { shape { dim: 2 dim: 3 } } } '
                    'layer { name: "drop" type: "Dropout" bottom: "data" top: "data" }')
    with pytest.raises(CaeError, match="layer drop: type 'Dropout' is not supported"):
        TorchNet(net, "test")


def test_caffemodel_round_trip_and_bad_file(tmp_path):
    layers = [("conv1", [np.arange(6, dtype=np.float32).reshape(2, 3, 1, 1), np.ones(2, np.float32)])]
    path = str(tmp_path / "m.caffemodel")
    caffemodel.write_caffemodel(path, "n", layers)
    (name, arrays), = caffemodel.read_caffemodel(path)
    assert name == "conv1" and arrays[0].shape == (2, 3, 1, 1)
    assert np.array_equal(arrays[0], layers[0][1][0])
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(b"\xff\xff\xff not a proto")
    with pytest.raises(CaeError, match="bad.caffemodel: not a binary .caffemodel"):
        caffemodel.read_caffemodel(str(bad))


def test_train_resume_extract_with_torch_cli(tmp_path):
    """`caffe-cae train/extract --backend torch` end to end on tiny data (no engine needed);
    `--mode gpu` without a CUDA device is one line, exit 2."""
    need_torch()
    from engine_support import cli
    root = str(tmp_path)
    write_tiny(os.path.join(root, "data", "hdf5"), n=250, n_test=150, list_prefix="data/hdf5")
    run = os.path.join(root, "run")
    common = ["--set", "solver.display=2", "--set", "solver.test_interval=3", "--set", "solver.snapshot=3"]
    first = cli("train", "--net", "model4", "--dim", "2", "--iters", "6", "--out", run, "--backend", "torch",
                "--stop-after", "3", *common, cwd=root)
    assert first.returncode == 0, first.stderr[-2000:]
    second = cli("train", "--out", run, "--resume", "--backend", "torch", cwd=root)
    assert second.returncode == 0, second.stderr[-2000:]
    with open(os.path.join(run, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["status"] == "finished" and manifest["iterations"] == 6
    assert [s.get("backend", manifest.get("backend")) for s in manifest["sessions"]] == ["torch", "torch"]
    with open(os.path.join(run, "log.jsonl")) as f:
        phases = [json.loads(line)["phase"] for line in f]
    assert phases.count("train") == 3 and phases.count("test-on-test") == 2
    out = cli("extract", run, "--backend", "torch", cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    with h5py.File(os.path.join(run, "codes.h5"), "r") as f:
        assert f["code"].shape == (150, 2) and f["reconstruction"].shape == (150, 28, 28)
        assert f.attrs["extract_backend"] == "torch"
    import torch
    if not torch.cuda.is_available():
        gpu = cli("train", "--net", "model4", "--dim", "2", "--iters", "2", "--out", os.path.join(root, "g"),
                  "--backend", "torch", "--mode", "gpu", cwd=root)
        assert gpu.returncode == 2
        assert gpu.stderr.strip().splitlines()[-1].startswith("caffe-cae: --mode gpu: PyTorch sees no CUDA GPU") or \
            "PyTorch sees no CUDA GPU" in gpu.stderr, gpu.stderr


#: (transposed, groups, stride, pad, kernel, C_in, C_out, H): the nets' shapes, and what the
#: kernels' fallbacks cover (groups, strides, pads, 1x1 maps, a 17x17 kernel, a single map)
KERNEL_CASES = [(False, 1, 1, 0, 5, 3, 6, 10), (False, 2, 1, 1, 3, 4, 6, 9), (True, 1, 1, 0, 5, 3, 6, 7),
                (True, 2, 1, 1, 3, 4, 6, 7), (False, 1, 2, 1, 3, 3, 4, 9), (True, 1, 2, 0, 3, 3, 4, 5),
                (False, 3, 1, 2, 5, 3, 6, 8), (True, 3, 1, 0, 4, 6, 3, 1), (True, 1, 1, 0, 17, 4, 4, 12),
                (True, 1, 1, 0, 5, 26, 1, 24), (False, 1, 1, 0, 5, 26, 36, 12), (False, 1, 1, 0, 5, 1, 26, 28)]


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "im2col"])
@pytest.mark.parametrize("case", KERNEL_CASES)
def test_conv_kernels_equal_float64(case, onednn):
    """Every kernel path of torch_net._CaffeConv (output, input, weight and bias gradients) is
    within float32 rounding (2e-6 relative) of float64 autograd."""
    need_torch()
    import torch
    import torch.nn.functional as F
    from caffe_cae.backends.torch_net import _CaffeConv
    transposed, groups, stride, pad, k, c_in, c_out, h = case
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20, c_in, h, h, dtype=torch.float64, generator=gen, requires_grad=True)
    shape = (c_in, c_out // groups, k, k) if transposed else (c_out, c_in // groups, k, k)
    w = torch.randn(*shape, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(c_out, dtype=torch.float64, generator=gen, requires_grad=True)
    if transposed:
        y = F.conv_transpose2d(x, w, b, stride, pad, 0, groups)
    else:
        y = F.conv2d(x, w, b, stride, pad, 1, groups)
    gy = torch.randn(y.shape, dtype=torch.float64, generator=gen)
    ref = (y,) + torch.autograd.grad(y, (x, w, b), gy)
    xf, wf, bf = [v.detach().float().requires_grad_() for v in (x, w, b)]
    yf = _CaffeConv.apply(xf, wf, bf, (stride, stride), (pad, pad), (1, 1), groups, transposed, onednn)
    got = (yf,) + torch.autograd.grad(yf, (xf, wf, bf), gy.float())
    errs = [float((a.detach().double() - r.detach()).norm() / r.detach().norm()) for a, r in zip(got, ref)]
    assert max(errs) < 2e-6, dict(zip(["y", "gx", "gw", "gb"], errs))
