"""Moller's scaled conjugate gradient as MATLAB's ``trainscg`` writes it (sigma, lambda,
restart every n-weights epochs, the finite-difference curvature, the best validation
epoch kept), over F independent problems at once. ``classify.PatternnetObjective`` is the
paper's MLP; ``FunctionObjective`` wraps a plain batched function (tests)."""


class FunctionObjective:
    """The ``scg`` objective protocol, implemented for a plain batched function
    ``f(w) -> (value (F,), grad (F, n))`` of a flat torch tensor w (F, n)."""

    def __init__(self, f, w):
        self.f, self.w, self.p = f, w.clone(), None

    def start(self):
        return self.f(self.w)

    def set_direction(self, p):
        self.p = p.clone()

    def probe_slope(self, t):
        """p . grad f(w + t p), per problem."""
        _, g = self.f(self.w + t[:, None] * self.p)
        return (g * self.p).sum(1)

    def probe_value(self, t):
        return self.f(self.w + t[:, None] * self.p)[0]

    def move(self, t):
        """w <- w + t p (t = 0 leaves a problem where it is); value and gradient there."""
        self.w = self.w + t[:, None] * self.p
        return self.f(self.w)

    def val_perf(self):
        return None


def scg(obj, epochs, goal=0.0, min_grad=0.0, max_fail=None, sigma=5e-5, lam=5e-7, n_weights=None, progress=None):
    """Minimise F independent problems at once with MATLAB trainscg's algorithm.

    ``obj`` follows FunctionObjective's protocol (``w`` is (F, n); ``val_perf()`` returns
    the validation performance per problem, or None without validation). ``n_weights``
    (F,) sets the restart period (default n). Returns a dict: best_w (the weights of the
    lowest validation performance, or of the last epoch without validation), best_epoch,
    epochs (run per problem), stop (reason per problem), perf, vperf."""
    import torch

    w = obj.w
    f_count, n = w.shape
    dev, dt = w.device, w.dtype
    restart_every = torch.as_tensor(n_weights if n_weights is not None else [n] * f_count, device=dev)
    perf, g = obj.start()
    vperf = obj.val_perf()
    validate = vperf is not None
    best_w = w.clone()
    best_vperf = vperf.clone() if validate else None
    best_epoch = torch.zeros(f_count, dtype=torch.long, device=dev)
    val_fail = torch.zeros(f_count, dtype=torch.long, device=dev)
    gradient = g.norm(dim=1)
    p = -g
    obj.set_direction(p)
    nrm2 = (p * p).sum(1)
    success = torch.ones(f_count, dtype=torch.bool, device=dev)
    lambdab = torch.zeros(f_count, dtype=dt, device=dev)
    lambdak = torch.full((f_count,), lam, dtype=dt, device=dev)
    deltak = torch.zeros(f_count, dtype=dt, device=dev)
    active = torch.ones(f_count, dtype=torch.bool, device=dev)
    ran = torch.zeros(f_count, dtype=torch.long, device=dev)
    stop = [None] * f_count
    zero = torch.zeros((), dtype=dt, device=dev)
    for epoch in range(epochs + 1):
        reasons = [("performance goal met", perf <= goal), ("maximum epoch reached", torch.full_like(active, epoch == epochs)),
                   ("minimum gradient reached", gradient <= min_grad)]
        if validate and max_fail is not None:
            reasons.append(("validation stop", val_fail >= max_fail))
        for why, hit in reasons:
            for i in torch.nonzero(active & hit).flatten().tolist():
                stop[i] = why
                ran[i] = epoch
                active[i] = False
        if not bool(active.any()):
            break
        # second-order information where the last step succeeded
        safe2 = torch.where(nrm2 > 0, nrm2, torch.ones_like(nrm2))
        sigmak = torch.where(active & success, sigma / safe2.sqrt(), zero)
        pg = (p * g).sum(1)
        if bool((active & success).any()):
            fresh = (obj.probe_slope(sigmak) - pg) / torch.where(sigmak > 0, sigmak, torch.ones_like(sigmak))
            deltak = torch.where(active & success, fresh, deltak)
        deltak = deltak + (lambdak - lambdab) * nrm2
        neg = active & (deltak <= 0)
        lambdab = torch.where(neg, 2 * (lambdak - deltak / safe2), lambdab)
        deltak = torch.where(neg, -deltak + lambdak * nrm2, deltak)
        lambdak = torch.where(neg, lambdab, lambdak)
        muk = -pg
        alphak = torch.where(active, muk / deltak, zero)
        perf_t = obj.probe_value(alphak)
        difk = 2 * deltak * (perf - perf_t) / (muk * muk)
        ok = active & (difk >= 0)
        if bool(ok.any()):
            g_old = g
            perf_new, g_new = obj.move(torch.where(ok, alphak, zero))
            perf = torch.where(ok, perf_new, perf)
            g = torch.where(ok[:, None], g_new, g)
            gradient = g.norm(dim=1)
            beta = ((g * g).sum(1) - (g * g_old).sum(1)) / muk
            beta = torch.where(torch.remainder(torch.full_like(restart_every, epoch), restart_every) == 0, zero, beta)
            p = torch.where(ok[:, None], -g + beta[:, None] * p, p)
            obj.set_direction(p)
            nrm2 = torch.where(ok, (p * p).sum(1), nrm2)
        lambdab = torch.where(ok, zero, torch.where(active, lambdak, lambdab))
        lambdak = torch.where(ok & (difk >= 0.75), 0.25 * lambdak, lambdak)
        success = torch.where(active, ok, success)
        inc = active & (difk < 0.25) & (nrm2 != 0)
        lambdak = torch.where(inc, lambdak + deltak * (1 - difk) / torch.where(inc, nrm2, torch.ones_like(nrm2)),
                              lambdak)
        if validate:
            vperf = obj.val_perf()
            better = active & (vperf < best_vperf)
            if bool(better.any()):
                best_w[better] = obj.w[better]
                best_vperf = torch.where(better, vperf, best_vperf)
                best_epoch = torch.where(better, torch.full_like(best_epoch, epoch + 1), best_epoch)
            val_fail = torch.where(better, torch.zeros_like(val_fail), val_fail + (active & (vperf > best_vperf)).long())
        if progress is not None:
            progress(epoch + 1, epochs)
    if not validate:
        best_w = obj.w.clone()
        best_epoch = ran.clone()
    return {"best_w": best_w, "best_epoch": best_epoch.tolist(), "epochs": ran.tolist(), "stop": stop,
            "perf": perf.tolist(), "vperf": best_vperf.tolist() if validate else None}
