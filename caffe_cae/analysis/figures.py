"""The paper's figures of one run (matplotlib, Agg, no pyplot state); each ``fig_*`` returns a Figure.

The 2-D map of the test codes (the code itself for D = 2, t-SNE otherwise: Figs. 4-10),
Table 6's reconstructions of a 2, 4, 5 and 8, a grid of random test digits with their
reconstructions, Fig. 11's panels from ``blobs_digit5.h5``, learning curves and the
first-layer filters; ``save_figure`` writes PNG and SVG. (The net diagram, Figs. 2-3, is
``netdraw``.)

t-SNE (scikit-learn Barnes-Hut, PCA initialisation, learning rate 'auto', perplexity 30)
is run with ``max_iter=400`` (250 of them early exaggeration) and ``angle=0.8`` instead of
the defaults 1000 and 0.5: on 10000 x 30 codes on two shared cores the defaults take over
two minutes, these settings about a quarter of that, and the clusters are the same at a
glance.
"""
import math
import os

import numpy as np

from ..errors import CaeError
from ..files import atomic_path
from .measure import SEED

TABLE6_DIGITS = (2, 4, 5, 8)
TSNE_PARAMS = {"perplexity": 30.0, "max_iter": 400, "angle": 0.8, "init": "pca", "learning_rate": "auto"}


def _figure(width, height):
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), dpi=100)


def save_figure(fig, folder, stem):
    """Save ``fig`` as stem.png and stem.svg (atomic); returns the two file names."""
    names = []
    for ext in ("png", "svg"):
        target = os.path.join(folder, "%s.%s" % (stem, ext))
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=ext, dpi=100)
        names.append(os.path.basename(target))
    return names


def embed_2d(code, seed=SEED, jobs=1, tsne=None):
    """(N x 2 map, method): the code itself for D = 2, t-SNE of it otherwise (D = 1: index)."""
    code = np.asarray(code, dtype=np.float64)
    if code.shape[1] == 2:
        return code, "code"
    if code.shape[1] == 1:
        return np.column_stack([code[:, 0], np.arange(len(code))]), "code (1-D) vs index"
    from sklearn.manifold import TSNE
    params = dict(TSNE_PARAMS, **(tsne or {}))
    params["perplexity"] = min(params["perplexity"], max(1.0, (len(code) - 1) / 3.0))
    return TSNE(n_components=2, random_state=seed, n_jobs=jobs, **params).fit_transform(code), "t-SNE"


def fig_code_map(points, labels, title):
    fig = _figure(6.5, 6)
    ax = fig.add_subplot(1, 1, 1)
    colours = _tab10()
    size = float(np.clip(2e4 / max(len(points), 1), 1.5, 12.0))
    for k in np.unique(labels):
        mine = labels == k
        ax.scatter(points[mine, 0], points[mine, 1], s=size, color=colours[int(k) % 10], label=str(k),
                   rasterized=True, linewidths=0)
    ax.legend(markerscale=5, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def _tab10():
    from matplotlib import colormaps
    return [colormaps["tab10"](i) for i in range(10)]


def _mosaic(tiles, columns, pad=1, fill=np.nan):
    """Tiles (n x h x w) into one image, ``columns`` per row, separated by ``pad`` pixels."""
    tiles = np.asarray(tiles, dtype=np.float64)
    n, h, w = tiles.shape
    rows = int(math.ceil(n / float(columns)))
    out = np.full((rows * (h + pad) - pad, columns * (w + pad) - pad), fill)
    for i in range(n):
        r, c = divmod(i, columns)
        out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = tiles[i]
    return out


def pick_digits(labels, digits=TABLE6_DIGITS, seed=SEED):
    """One random test index per digit (fixed seed), as Table 6's 'random digits'."""
    rng = np.random.default_rng(seed)
    picked = []
    for d in digits:
        where = np.flatnonzero(labels == d)
        if len(where):
            picked.append(int(rng.choice(where)))
    return picked


def fig_reconstructions(images, recon, indices, labels, title):
    fig = _figure(1.6 * max(len(indices), 1) + 1, 3.6)
    for j, i in enumerate(indices):
        for row, (source, name) in enumerate(((images, "input"), (recon, "reconstruction"))):
            ax = fig.add_subplot(2, len(indices), row * len(indices) + j + 1)
            ax.imshow(source[i], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
            if row == 0:
                ax.set_title("digit %d (#%d)" % (labels[i], i), fontsize=8)
    fig.suptitle(title, fontsize=9)
    return fig


def fig_recon_grid(images, recon, indices, title, columns=10):
    """Rows of ``columns`` inputs, each followed by a row of their reconstructions."""
    tiles = []
    for start in range(0, len(indices), columns):
        chunk = list(indices[start:start + columns])
        blank = [np.full((28, 28), np.nan)] * (columns - len(chunk))
        tiles += [images[i] for i in chunk] + blank + [recon[i] for i in chunk] + blank
    mosaic = _mosaic(np.stack(tiles), columns, pad=2)
    fig = _figure(8, 8 * mosaic.shape[0] / mosaic.shape[1] + 0.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(np.ma.masked_invalid(mosaic), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title + " (odd rows: inputs, even rows: reconstructions)", fontsize=9)
    fig.tight_layout()
    return fig


def blob_size(shape):
    """The paper's size text: H x W x C for maps (24x24x26), 1x1xN for fully-connected blobs."""
    dims = list(shape[1:]) if len(shape) > 1 else list(shape)
    if len(dims) >= 3:
        c, h, w = dims[0], dims[1], int(np.prod(dims[2:]))
        return "%dx%dx%d" % (h, w, c), (h * w > 1)
    return "1x1x%d" % int(np.prod(dims)), False


def panel_title(step):
    size, _ = blob_size(step["data"].shape)
    data = step["data"]
    return "%s|%s %s [%.3g..%.3g]" % (step["blob"], step["layer"], size, float(data.min()), float(data.max()))


def fig_blobs(steps, image=None, title=""):
    """One panel per (blob, layer) step: maps as a mosaic, fully-connected blobs as bars."""
    first_is_input = bool(steps) and steps[0]["type"] in ("Input", "Data", "HDF5Data", "MemoryData")
    panels = ([{"blob": "data", "layer": "input", "type": "Input", "data": image}]
              if image is not None and not first_is_input else []) + list(steps)
    columns = 5
    rows = int(math.ceil(len(panels) / float(columns)))
    fig = _figure(3.2 * columns, 2.9 * rows + 0.4)
    for i, step in enumerate(panels):
        ax = fig.add_subplot(rows, columns, i + 1)
        data = np.asarray(step["data"], dtype=np.float64)
        _, spatial = blob_size(data.shape)
        if spatial or data.size == 784:     # a flat 784-vector (deep AE) is an image too
            maps = data.reshape(data.shape[1], data.shape[2], -1) if spatial else data.reshape(1, 28, 28)
            lo, hi = float(maps.min()), float(maps.max())
            ax.imshow(np.ma.masked_invalid(_mosaic(maps, int(math.ceil(math.sqrt(len(maps)))))),
                      cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            values = data.ravel()
            ax.bar(np.arange(1, len(values) + 1), values, width=1.0, color="tab:blue", linewidth=0)
            ax.set_xlim(0.5, len(values) + 0.5)
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.tick_params(labelsize=6)
        ax.set_title(panel_title(step), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def first_layer(params, steps):
    """(layer, weights) of the first layer with weights, in forward order (conv1 / encode1)."""
    for step in steps:
        if step["layer"] in params and params[step["layer"]]:
            return step["layer"], params[step["layer"]][0]
    for name in ("conv1", "encode1"):
        if name in params and params[name]:
            return name, params[name][0]
    return None, None


def fig_filters(layer, weights, title, limit=100):
    """First-layer filters, each scaled to its own range: conv kernels, or fully-connected
    rows shown as 28 x 28 images (at most ``limit``)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 4:
        tiles = w.reshape(-1, w.shape[2], w.shape[3])
    elif w.ndim == 2 and w.shape[1] == 784:
        tiles = w.reshape(-1, 28, 28)
    else:
        raise CaeError("params/%s/0: cannot show weights of shape %s as filters" % (layer, w.shape))
    tiles = tiles[:limit]
    lo = tiles.min(axis=(1, 2), keepdims=True)
    span = np.maximum(tiles.max(axis=(1, 2), keepdims=True) - lo, 1e-12)
    mosaic = _mosaic((tiles - lo) / span, int(math.ceil(math.sqrt(len(tiles)))))
    fig = _figure(6, 6.3)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(np.ma.masked_invalid(mosaic), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title("%s: %s weights %s" % (title, layer, "x".join(str(s) for s in w.shape)), fontsize=9)
    fig.tight_layout()
    return fig


def fig_learning_curves(entries, title):
    keys = []
    for entry in entries:
        for key in entry["loss"]:
            if key not in keys:
                keys.append(key)
    fig = _figure(5 * max(len(keys), 1), 4)
    styles = {"train": ("tab:red", "-"), "test-on-train": ("tab:orange", "--"), "test-on-test": ("k", "-")}
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, max(len(keys), 1), i + 1)
        for phase, (colour, line) in styles.items():
            points = [(e["iter"], e["loss"][key]) for e in entries if e.get("phase") == phase and key in e["loss"]
                      and e["loss"][key] is not None]
            if points:
                x, y = zip(*sorted(points))
                ax.plot(x, y, line, color=colour, label=phase, marker="." if len(x) < 30 else None)
        ax.set_xlabel("iteration")
        ax.set_ylabel(key + " loss")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
