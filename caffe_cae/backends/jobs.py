"""The extraction and benchmark loops every worker runs, around its own forward pass or solver.

Workers call :func:`finish_extract` and :func:`run_bench`; :func:`main` is their command line.
Imports only numpy, h5py and the standard library (it runs inside the Caffe engine too).
"""
import json
import sys
import time

from .protocol import emit, keyed, write_blobs, write_codes


def digit_image(job):
    """(index, 1 x 1 x 28 x 28 float32 image) of the first test image of ``job["digit"]``."""
    import h5py
    import numpy as np
    with h5py.File(job["digit_h5"], "r") as f:
        labels = np.asarray(f["label"][:])
        where = np.flatnonzero(labels == job["digit"])
        if not len(where):
            raise SystemExit("%s: no image with label %d" % (job["digit_h5"], job["digit"]))
        index = int(where[0])
        return index, np.asarray(f["data"][index:index + 1], dtype=np.float32)


def encode(forward, job):
    """Run ``forward(chunk)`` -> {blob: N x ... array} over the split's images in batches of
    ``job["batch"]``; returns (code N x D, labels, reconstruction N x 28 x 28 or None, seconds)."""
    import h5py
    import numpy as np
    started = time.time()
    last = 0.0
    with h5py.File(job["data_h5"], "r") as f:
        n = f["data"].shape[0]
        labels = np.asarray(f["label"][:], dtype=np.float32)
        code = recon = None
        for start in range(0, n, job["batch"]):
            chunk = np.ascontiguousarray(f["data"][start:start + job["batch"]], dtype=np.float32)
            m = chunk.shape[0]
            blobs = forward(chunk)
            c = np.asarray(blobs[job["code_blob"]], dtype=np.float32).reshape(m, -1)
            if code is None:
                code = np.zeros((n, c.shape[1]), np.float32)
                recon = np.zeros((n, 28, 28), np.float32) if job.get("recon_blob") else None
            code[start:start + m] = c
            if recon is not None:
                recon[start:start + m] = np.asarray(blobs[job["recon_blob"]]).reshape(m, 28, 28)
            now = time.time()
            if now - last > 0.5:
                emit("progress", what="codes", done=start + m, total=n)
                last = now
    return code, labels, recon, time.time() - started


def finish_extract(job, forward, stage_losses, trace, params):
    """The extraction every worker does: codes over the split (``forward``), the stage
    losses (``stage_losses()`` -> {top: mean}), ``codes.h5``, then (``job["blobs_out"]``) the
    digit's forward steps (``trace(image)`` -> steps) and ``params()`` into the blobs file.
    Emits ``result`` and ``end``; returns 0."""
    code, labels, recon, seconds = encode(forward, job)
    losses = keyed(stage_losses()) if job.get("train_test") else {}
    write_codes(job["codes_out"], code, labels, recon, job.get("attrs"), losses)
    result = {"n": code.shape[0], "dim": code.shape[1], "losses": losses, "codes_seconds": seconds}
    if job.get("blobs_out"):
        index, image = digit_image(job)
        steps = trace(image)
        write_blobs(job["blobs_out"], steps, params(), image, job["digit"], index, job.get("attrs"))
        result["digit_index"] = index
    emit("result", **result)
    emit("end", status="finished")
    return 0


# ----------------------------------------------------------------------------------------
# Benchmark


def run_bench(job, make_solver, sync=None, extra=None):
    """ms per SGD iteration for each net of the job (mode, nets [{name, solver}], warmup,
    repeats, iters): wall clock and CPU time of this process (all its threads), medians.
    ``make_solver(path)`` -> an object with ``step(n)``; ``sync()`` waits for a device."""
    sync = sync or (lambda: None)
    for entry in job["nets"]:
        solver = make_solver(entry["solver"])
        started = time.time()
        solver.step(job["warmup"])
        times, cpu = [], []
        for _ in range(job["repeats"]):
            sync()
            t, c = time.time(), time.process_time()
            solver.step(job["iters"])
            sync()
            times.append((time.time() - t) * 1000.0 / job["iters"])
            cpu.append((time.process_time() - c) * 1000.0 / job["iters"])
        times.sort()
        cpu.sort()
        emit("result", net=entry["name"], ms=times[len(times) // 2], ms_all=times, cpu_ms=cpu[len(cpu) // 2],
             seconds=time.time() - started, **(extra or {}))
        del solver
    emit("end", status="finished")
    return 0


def main(argv, name, commands):
    """A worker's command line: ``python -m NAME COMMAND JOB_JSON``."""
    if len(argv) != 3 or argv[1] not in commands:
        sys.stderr.write("usage: python3 -m %s %s JOB_JSON\n" % (name, "|".join(sorted(commands))))
        return 2
    return commands[argv[1]](json.loads(argv[2]))
