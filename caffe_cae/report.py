"""Tables 4 and 5 of the paper remade from runs, each cell beside the paper's value.

``build(run_dirs, out_dir)`` reads every run's ``manifest.json``, ``log.jsonl`` and
``analysis.json`` (a run that failed or was never analysed still gets its row, marked),
groups the runs by (net, D), and writes ``out_dir/index.html`` and ``out_dir/report.md``
with the figures copied beside them, so the folder is self-contained. Cells are the mean
over the runs of a group, with the spread (sample standard deviation) when there are
several. A run shorter than the paper's 50000 iterations is flagged in the table.
"""
import html
import json
import math
import os
import statistics

from . import files
from . import paper as paper_lib
from . import rundir
from .files import write_text

PAPER_ITERS = 50000
LOSS_KEYS = {"autoencoder": ("cross_entropy", "euclidean"), "siamese": ("contrastive",)}


def _load_json(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _final_losses(run_dir):
    """The last logged loss of each test stage: {"test-on-train": {...}, "test-on-test": {...}}."""
    last = {}
    try:
        with open(os.path.join(run_dir, rundir.LOG), encoding="utf-8") as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("phase") in ("test-on-train", "test-on-test"):
                    last[entry["phase"]] = entry.get("loss", {})
    except OSError:
        pass
    return last


def _extract_backend(run_dir):
    """The backend that computed the run's codes (codes.h5 attribute), or None."""
    try:
        import h5py
        with h5py.File(os.path.join(run_dir, rundir.codes_name("test")), "r") as f:
            value = f.attrs.get("extract_backend")
    except (OSError, ValueError):
        return None
    return value.decode() if isinstance(value, bytes) else (str(value) if value else None)


def backend_label(record):
    """``torch``, or ``caffe / torch`` when training and extraction ran in different backends."""
    train_be = record.get("backend") or "caffe"
    extract_be = record.get("extract_backend")
    return train_be if extract_be in (None, train_be) else "%s / %s" % (train_be, extract_be)


def mlp_label(analysis):
    """The MLP an analysis used, e.g. ``patternnet tansig, 6000 epochs``; says when the
    epochs differ from the paper's 6000 (``reproduce-quick``)."""
    mlp = (analysis.get("classifier") or {}).get("mlp")
    if not isinstance(mlp, dict):
        return None
    settings = mlp.get("settings") or {}
    if mlp.get("name") != "patternnet":
        return mlp.get("name")
    epochs = settings.get("epochs")
    note = "" if epochs == 6000 else " (the paper: 6000)"
    return "patternnet %s, %s epochs%s" % (settings.get("hidden_transfer"), epochs, note)


def read_run(run_dir):
    """One run as a flat record for the tables."""
    manifest = _load_json(os.path.join(run_dir, rundir.MANIFEST)) or {}
    analysis = _load_json(os.path.join(run_dir, rundir.ANALYSIS)) or {}
    failed = _load_json(os.path.join(run_dir, "failed.json"))
    guess = _from_path(run_dir)
    net = manifest.get("net") or analysis.get("net") or guess.get("net")
    dim = manifest.get("dim") or analysis.get("dim") or guess.get("dim")
    engine = manifest.get("engine") or {}
    losses = _final_losses(run_dir)
    keys = LOSS_KEYS["siamese" if net == "siamese" else "autoencoder"]
    train = [losses.get("test-on-train", {}).get(k) for k in keys]
    test = [losses.get("test-on-test", {}).get(k) for k in keys]
    sparsity = analysis.get("sparsity") or {}
    status = manifest.get("status", "missing")
    if failed is not None:
        status = "failed"
    elif status == "finished" and not analysis:
        status = "not analysed"
    return {
        "dir": run_dir, "name": "/".join(os.path.normpath(run_dir).split(os.sep)[-2:]), "net": net, "dim": dim,
        "seed": manifest.get("seed", guess.get("seed")), "status": status,
        "iterations": manifest.get("iterations") or manifest.get("iter"),
        "wall_seconds": manifest.get("wall_seconds") or manifest.get("wall_time"),
        "engine": engine.get("kind") if isinstance(engine, dict) else engine,
        "caffe_version": (engine.get("caffe_version") if isinstance(engine, dict) else None)
        or manifest.get("caffe_version"),
        "mode": manifest.get("mode"), "backend": manifest.get("backend", "caffe"),
        "extract_backend": _extract_backend(run_dir),
        "train": train if all(v is not None for v in train) else None,
        "test": test if all(v is not None for v in test) else None,
        "linear_error": analysis.get("linear_error"), "mlp_error": analysis.get("mlp_error"),
        "mlp": mlp_label(analysis),
        "sparsity": sparsity.get("30") if isinstance(sparsity, dict) else sparsity,
        "figures": [os.path.join(run_dir, f) for f in analysis.get("figures", [])
                    if os.path.exists(os.path.join(run_dir, f))],
    }


def _from_path(run_dir):
    """net, dim and seed from the grid's layout ``{net}_d{D}/run{seed}``, when it is that."""
    parts = os.path.normpath(run_dir).split(os.sep)
    out = {}
    if len(parts) >= 2 and "_d" in parts[-2] and parts[-1].startswith("run"):
        net, _, dim = parts[-2].rpartition("_d")
        if dim.isdigit():
            out.update(net=net, dim=int(dim))
        if parts[-1][3:].isdigit():
            out["seed"] = int(parts[-1][3:])
    return out


def _stats(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None, None
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else None
    return mean, spread


def _paper_losses(row, which):
    runs = row["runs"]
    columns = list(zip(*[r[which] for r in runs]))
    return [statistics.fmean(c) for c in columns]


def groups(records, paper=None):
    """Rows of Table 4: one per (net, D), ours beside the paper's."""
    paper = paper or paper_lib.load()
    rows = {}
    for record in records:
        rows.setdefault((record["net"], record["dim"]), []).append(record)
    out = []
    order = {net: i for i, net in enumerate(paper["nets"])}
    for (net, dim), runs in sorted(rows.items(), key=lambda kv: (order.get(kv[0][0], 99), str(kv[0][0]),
                                                               kv[0][1] or 0)):
        ok = [r for r in runs if r["status"] not in ("failed", "missing")]
        reference = paper["table4"].get(net, {}).get(str(dim))
        row = {"net": net, "dim": dim, "runs": runs, "n_ok": len(ok),
               "failed": [r["name"] for r in runs if r["status"] == "failed"],
               "short": any((r["iterations"] or 0) < PAPER_ITERS for r in ok),
               "iterations": sorted({r["iterations"] for r in ok if r["iterations"]}),
               "backend": sorted({backend_label(r) for r in ok}),
               "paper": reference}
        for key in ("linear_error", "mlp_error", "sparsity"):
            row[key] = _stats([r[key] for r in ok])
        for which in ("train", "test"):
            values = [r[which] for r in ok if r[which]]
            row[which] = [_stats(col) for col in zip(*values)] if values else None
            if reference:
                row["paper_" + which] = _paper_losses(reference, which)
        out.append(row)
    return out


def timing_rows(records, paper=None):
    """Table 5: minutes per run on this machine (and projected to 50000 iterations)."""
    paper = paper or paper_lib.load()
    by_net = {}
    for record in records:
        if record["wall_seconds"] and record["iterations"] and record["status"] == "finished":
            by_net.setdefault(record["net"], []).append(record)
    rows = []
    for net, runs in by_net.items():
        minutes = statistics.fmean(r["wall_seconds"] / 60 for r in runs)
        projected = statistics.fmean(r["wall_seconds"] / 60 * PAPER_ITERS / r["iterations"] for r in runs)
        rows.append({"net": net, "minutes": minutes, "projected_minutes": projected,
                     "iterations": sorted({r["iterations"] for r in runs}),
                     "mode": sorted({str(r["mode"]) for r in runs}),
                     "backend": sorted({r["backend"] or "caffe" for r in runs}),
                     "paper": {system["name"]: system["minutes"].get(net) for system in paper["table5"].values()}})
    order = {net: i for i, net in enumerate(paper["nets"])}
    return sorted(rows, key=lambda r: order.get(r["net"], 99))


def _fmt(stat, digits=2):
    if stat is None:
        return "n/a"
    mean, spread = stat if isinstance(stat, tuple) else (stat, None)
    if mean is None:
        return "n/a"
    text = f"{mean:.{digits}f}"
    if spread is not None:
        text += f" ± {spread:.{digits}f}"
    return text


def _diff(stat, reference, digits=2):
    if stat is None or stat[0] is None or reference is None:
        return ""
    return f"{stat[0] - reference:+.{digits}f}"


def _loss_cell(row, which):
    ours = row.get(which)
    ref = row.get("paper_" + which)
    if not ours:
        return "n/a", ("; ".join(f"{v:.2f}" for v in ref) if ref else "")
    return "; ".join(_fmt(s) for s in ours), ("; ".join(f"{v:.2f}" for v in ref) if ref else "")


def table4(rows):
    """Table 4 as (header, body rows) of strings."""
    header = ["Net", "D", "Runs", "Iterations", "Backend", "Loss train (ours)", "Loss train (paper)",
              "Loss test (ours)", "Loss test (paper)", "Linear % (ours)", "paper", "diff", "MLP % (ours)",
              "paper", "diff", "Sparsity % (ours)", "paper", "diff"]
    body = []
    for row in rows:
        ref = row["paper"] or {}
        iters = ", ".join(str(i) for i in row["iterations"]) or "n/a"
        if row["short"]:
            iters += f" (short: paper {PAPER_ITERS})"
        runs = str(row["n_ok"])
        if row["failed"]:
            runs += f" ({len(row['failed'])} failed: {', '.join(row['failed'])})"
        train, train_ref = _loss_cell(row, "train")
        test, test_ref = _loss_cell(row, "test")
        cells = [str(row["net"]), str(row["dim"]), runs, iters, ", ".join(row["backend"]) or "n/a",
                 train, train_ref, test, test_ref]
        for key in ("linear_error", "mlp_error", "sparsity"):
            cells += [_fmt(row[key]), "" if ref.get(key) is None else f"{ref[key]:.2f}", _diff(row[key], ref.get(key))]
        body.append(cells)
    return header, body


def table5(rows, paper=None):
    paper = paper or paper_lib.load()
    systems = [system["name"] for system in paper["table5"].values()]
    header = ["Net", "Iterations", "Mode", "Backend", "Minutes per run (ours)", "Projected to 50000 it."] + \
        [f"paper: {name}" for name in systems]
    body = []
    for row in rows:
        body.append([row["net"], ", ".join(map(str, row["iterations"])), ", ".join(row["mode"]),
                     ", ".join(row["backend"]), f"{row['minutes']:.1f}", f"{row['projected_minutes']:.0f}"] +
                    ["" if row["paper"].get(name) is None else str(row["paper"][name]) for name in systems])
    return header, body


def _markdown_table(header, body):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |" for cells in body]
    return "\n".join(lines)


def _html_table(header, body, caption):
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = []
    for cells in body:
        marked = " class=\"short\"" if any("short" in c or "failed" in c for c in cells) else ""
        rows.append(f"<tr{marked}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return f"<table><caption>{html.escape(caption)}</caption><thead><tr>{head}</tr></thead>" \
           f"<tbody>{''.join(rows)}</tbody></table>"


def conditions(records):
    """Engine, Caffe version, CPU/GPU, backend, iterations and MLP classifier of the runs."""
    def distinct(key):
        return sorted({str(r[key]) for r in records if r[key] is not None}) or ["n/a"]
    return {"engine": distinct("engine"), "caffe_version": distinct("caffe_version"), "mode": distinct("mode"),
            "backend": distinct("backend"), "iterations": distinct("iterations"), "mlp": distinct("mlp"),
            "runs": len(records),
            "failed": [r["name"] for r in records if r["status"] == "failed"]}


def build(run_dirs, out_dir, paper=None):
    """Write ``out_dir/index.html`` and ``out_dir/report.md``; returns their paths."""
    paper = paper or paper_lib.load()
    records = [read_run(d) for d in run_dirs]
    rows = groups(records, paper)
    t4 = table4(rows)
    t5 = table5(timing_rows(records, paper), paper)
    cond = conditions(records)
    files.ensure_dir(out_dir)
    figures = []
    for record in records:
        for path in record["figures"]:
            if not path.endswith(".png"):
                continue
            rel = os.path.join("figures", str(record["net"] or "run"), f"d{record['dim']}",
                               os.path.basename(record["dir"].rstrip(os.sep)), os.path.basename(path))
            target = os.path.join(out_dir, rel)
            files.copy_file(path, target)
            figures.append((record, rel))
    cond_lines = [f"- {key}: {', '.join(value) if isinstance(value, list) else value}"
                  for key, value in cond.items() if key != "failed"]
    if cond["failed"]:
        cond_lines.append(f"- failed runs: {', '.join(cond['failed'])}")
    md = ["# caffe-cae report", "",
          "Turchenko, Chalmers & Luczak (2019) remade from these runs; every cell beside the paper's.", "",
          "## Conditions", ""] + cond_lines + [
          "", "## Table 4: losses (train / test stage), classification errors, sparsity", "",
          "Losses: cross-entropy; Euclidean (Siamese: contrastive), mean ± sd over runs; the paper's "
          "column is the mean of its three runs. Runs shorter than 50000 iterations are marked short. "
          "Backend: what trained the runs (losses) and, after ' / ' when it differs, what extracted their "
          "codes (errors, sparsity).", "",
          _markdown_table(*t4), "", "## Table 5: training time", "", _markdown_table(*t5), "", "## Figures", ""]
    md += [f"![{record['net']} D={record['dim']} {record['name']}: {os.path.basename(rel)}]({rel})"
           for record, rel in figures]
    html_parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>caffe-cae report</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #999;padding:3px 6px;font-size:13px}tr.short td{background:#fff3cd}"
        "caption{font-weight:bold;text-align:left}figure{display:inline-block;margin:6px;vertical-align:top}"
        "img{max-width:420px;border:1px solid #ccc}figcaption{font-size:12px}</style></head>",
        "<body data-images='pending'><h1>caffe-cae report</h1>",
        "<p>Turchenko, Chalmers &amp; Luczak (2019) remade from these runs; every cell beside the paper's. "
        "Rows marked yellow are short (fewer than 50000 iterations) or have failed runs.</p>",
        "<h2>Conditions</h2><ul>" + "".join(f"<li>{html.escape(line[2:])}</li>" for line in cond_lines) + "</ul>",
        "<h2>Table 4</h2>", _html_table(*t4, "Losses (train / test stage), average per-class errors, sparsity"),
        "<h2>Table 5</h2>", _html_table(*t5, "Training time, minutes per run"),
        "<h2>Figures</h2>",
    ]
    for record, rel in figures:
        caption = f"{record['net']} D={record['dim']} {record['name']}: {os.path.basename(rel)}"
        html_parts.append(f"<figure><img src='{html.escape(rel)}' alt='{html.escape(caption)}'>"
                          f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    html_parts.append(
        "<script>window.addEventListener('load',function(){var imgs=document.images,bad=0;"
        "for(var i=0;i<imgs.length;i++){if(!imgs[i].complete||imgs[i].naturalWidth===0)bad++;}"
        "document.body.setAttribute('data-images',imgs.length+' total, '+bad+' broken');});</script>"
        "</body></html>")
    index = os.path.join(out_dir, "index.html")
    markdown = os.path.join(out_dir, "report.md")
    write_text(index, "\n".join(html_parts))
    write_text(markdown, "\n".join(md) + "\n")
    write_text(os.path.join(out_dir, "report.json"),
                 json.dumps({"conditions": cond, "table4": {"header": t4[0], "rows": t4[1]},
                             "table5": {"header": t5[0], "rows": t5[1]}}, indent=1))
    return {"html": index, "markdown": markdown}
