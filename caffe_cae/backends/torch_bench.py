"""The torch backend's benchmark loop: the net, its plain-PyTorch peer and the machine's limit, interleaved.

For each net of the job (see :func:`caffe_cae.backends.jobs.run_bench` for the job) one
round is: ``iters`` iterations of the torch backend's solver, ``iters`` iterations of the same
net written in plain PyTorch (:mod:`torch_plain`, on the solver's first batch) and one large
float32 GEMM (``PEAK_SIZE`` squared, :func:`gemm_gflops`), all in this process with the same
threads; ``repeats`` rounds, medians of each. Taking the three in turn round by round means a
machine shared with other jobs slows all three alike, so their ratios hold where the
absolute times do not. Then :func:`layer_times` times each layer's forward and backward
pass over a few more iterations (timers at the layer boundaries; approximate, since the
hooks themselves cost a little).
"""
import time

from .protocol import emit
from .torch_plain import PLAIN_NETS, PlainTrainer

#: side of the square matrices of the peak measurement (2 x 2048^3 = 17.2 GFLOP per sample)
PEAK_SIZE = 2048
#: iterations over which the per-layer times are taken (medians)
LAYER_ITERS = 3


def _median(values):
    values = sorted(values)
    return values[len(values) // 2] if values else None


#: (device, size) -> the GEMM's operands and output, made once
_OPERANDS = {}


def gemm_gflops(torch, device, sync, size=PEAK_SIZE):
    """GFLOP/s of one ``size`` x ``size`` float32 matrix product (operands kept between calls)."""
    key = (str(device), size)
    if key not in _OPERANDS:
        gen = torch.Generator().manual_seed(0)
        a, b = (torch.rand(size, size, generator=gen).to(device) for _ in range(2))
        _OPERANDS[key] = (a, b, torch.empty(size, size, device=device))
        torch.mm(a, b, out=_OPERANDS[key][2])  # warm-up
    a, b, c = _OPERANDS[key]
    sync()
    t = time.perf_counter()
    torch.mm(a, b, out=c)
    sync()
    return 2.0 * size ** 3 / (time.perf_counter() - t) / 1e9


def _timed(step, iters, sync):
    sync()
    t, c = time.perf_counter(), time.process_time()
    step(iters)
    sync()
    return (time.perf_counter() - t) * 1000.0 / iters, (time.process_time() - c) * 1000.0 / iters


def layer_times(net, iters=LAYER_ITERS, sync=None):
    """[{name, type, forward_ms, backward_ms}] per layer of a TorchNet, medians over ``iters``
    forward-backward passes: a layer's forward is the time from the previous layer's tops to
    its own; its backward from the moment the gradient of one of its tops is ready to the
    next such moment of any layer (autograd runs the nodes one at a time on the CPU)."""
    sync = sync or (lambda: None)
    fwd, bwd = {}, {}
    for _ in range(iters):
        marks, events = [], []

        def trace(index, layer, top, value):
            sync()
            if not marks or marks[-1][0] != index:
                marks.append((index, time.perf_counter()))
            if value.requires_grad:
                value.register_hook(lambda grad, i=index: events.append((i, time.perf_counter())))

        sync()
        start = time.perf_counter()
        _, total = net.forward(trace=trace)
        net.zero_grad()
        total.backward()
        sync()
        end = time.perf_counter()
        before = start
        for index, at in marks:
            fwd.setdefault(index, []).append((at - before) * 1000.0)
            before = at
        spent = {}
        for (index, at), (_, nxt) in zip(events, events[1:] + [(None, end)]):
            spent[index] = spent.get(index, 0.0) + (nxt - at) * 1000.0
        for index in fwd:
            bwd.setdefault(index, []).append(spent.get(index, 0.0))
    net.zero_grad()
    return [{"name": net.layers[i].name, "type": net.layers[i].type, "forward_ms": _median(fwd[i]),
             "backward_ms": _median(bwd[i])} for i in sorted(fwd)]


def bench_nets(job, make_solver, torch, device, sync=None, extra=None):
    """Emit one ``result`` event per net (see the module docstring), then ``end``."""
    sync = sync or (lambda: None)
    for entry in job["nets"]:
        solver = make_solver(entry["solver"])
        started = time.time()
        solver.step(max(1, job["warmup"]))
        plain = None
        if entry["name"] in PLAIN_NETS:
            x = solver.net.blobs["data"].detach().clone()
            plain = PlainTrainer(entry["name"], job.get("dim", 10), x)
            plain.step(max(1, job["warmup"]))
        gemm_gflops(torch, device, sync)
        runs = {"ms": [], "cpu": [], "plain": [], "plain_cpu": [], "peak": []}
        for _ in range(job["repeats"]):
            ms, cpu = _timed(solver.step, job["iters"], sync)
            runs["ms"].append(ms)
            runs["cpu"].append(cpu)
            if plain is not None:
                ms, cpu = _timed(plain.step, job["iters"], sync)
                runs["plain"].append(ms)
                runs["plain_cpu"].append(cpu)
            runs["peak"].append(gemm_gflops(torch, device, sync))
        fields = {"ms": _median(runs["ms"]), "ms_all": sorted(runs["ms"]), "cpu_ms": _median(runs["cpu"]),
                  "peak_gflops": _median(runs["peak"]), "peak_gflops_all": sorted(runs["peak"]),
                  "layers": layer_times(solver.net, sync=sync)}
        if plain is not None:
            fields.update(plain_ms=_median(runs["plain"]), plain_ms_all=sorted(runs["plain"]),
                          plain_cpu_ms=_median(runs["plain_cpu"]))
        emit("result", net=entry["name"], seconds=time.time() - started, **fields, **(extra or {}))
        del solver, plain
    emit("end", status="finished")
    return 0
