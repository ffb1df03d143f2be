"""The paper's published numbers (Turchenko, Chalmers & Luczak 2019) as data.

``load()`` returns the contents of ``caffe_cae/paper.json``: Tables 1-5, the Section 5.1
compression figures, the classifier (MLP) sizes and the solver settings of Section 4.2.
The helpers below answer the questions the other stages ask of it. Standard library only
(usable inside the engine). Limits: Tables 1-3 are the paper's D=2 figures; Table 3 lists
Model 3 only, Models 4 and 5 have the same parameters (``table3_same_as``).
"""
import json
import os

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "paper.json")

#: keys of a Table 3 / Table 2 entry that are totals, not layers
TOTAL_KEYS = ("encoder_total", "decoder_total", "channel_total", "channels", "total")


def load(path=PATH):
    """The paper's numbers as a dict (a fresh copy on every call)."""
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def dims(net, paper=None):
    """The code sizes D the paper reports for ``net`` (Siamese: 2, 10, 20; others 2, 10, 30)."""
    paper = paper or load()
    return list(paper["dims"][net])


def layer_params(net, paper=None):
    """{layer: {"weights": w, "biases": b}} at D=2 for ``net`` from Table 2 (siamese, one
    channel) or Table 3 (other nets; Models 4-5 as Model 3), without the totals."""
    paper = paper or load()
    if net == "siamese":
        entry = paper["table2"]["siamese"]
    else:
        entry = paper["table3"][paper["table3_same_as"].get(net, net)]
    return {k: v for k, v in entry.items() if k not in TOTAL_KEYS}


def data_ratio(params, paper=None):
    """The paper's |Data/(w+b)|: MNIST training elements (60000 x 784) over ``params``, rounded."""
    paper = paper or load()
    return int(round(paper["data_elements"] / float(params)))


def mlp_hidden(dim, paper=None):
    """Hidden units H of the paper's code classifier D-H-10. The paper's own 14/42/66 for
    D = 2/10/30; for other D the |Data/(w+b)| = 100 rule, read as: the (D+1)*H + (H+1)*10
    parameters closest to |Data|/100 with |Data| = 9000 * D (one training fold of the
    10-fold cross-validation on the 10000 test codes). That reading reproduces 42 and 66
    (and 89 for the raw-pixel 784-88-10 net, 13 for D=2); the paper does not say more."""
    paper = paper or load()
    known = paper["mlp"]["hidden"].get(str(dim))
    if known is not None:
        return int(known)
    target = 9000.0 * dim / paper["mlp"]["data_over_params"]
    return max(1, int(round((target - 10) / (dim + 11))))


def code_bytes(dim, paper=None):
    """Bytes of a single-precision code of size ``dim`` (Section 5.1)."""
    paper = paper or load()
    return paper["compression"]["code_bytes_per_dim"] * dim


def switch_bytes(paper=None):
    """Bytes of Model 3's pooling switches (Section 5.1): sum of count x bits / 8 per pooling layer."""
    paper = paper or load()
    m3 = paper["compression"]["model3"]
    return sum(m3["switches"][k] * m3["switch_bits"][k] for k in m3["switches"]) / 8.0


def compression_ratio(stored_bytes, paper=None):
    """Compression ratio in % of ``stored_bytes`` against one 784-byte MNIST image
    (positive: smaller than the image; negative: inflation)."""
    paper = paper or load()
    image = paper["compression"]["image_bytes"]
    return 100.0 * (1.0 - stored_bytes / float(image))


def table4_row(net, dim, paper=None):
    """Table 4 entry for ``net`` at code size ``dim`` plus the means of the three runs:
    adds "train_mean" and "test_mean" (lists, one value per loss)."""
    paper = paper or load()
    row = dict(paper["table4"][net][str(dim)])
    for stage in ("train", "test"):
        values = [run[stage] for run in row["runs"]]
        row[stage + "_mean"] = [sum(v[i] for v in values) / len(values) for i in range(len(values[0]))]
    return row
