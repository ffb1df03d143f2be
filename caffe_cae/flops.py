"""Floating-point operations of one SGD iteration, from a parsed net alone (``inspect``'s shapes).

The counting rule (``iteration_flops``), per Convolution, Deconvolution and InnerProduct layer
of the TRAIN phase, one multiply-add = 2 FLOPs:

* forward: ``2 x weights x positions x N``, where positions are the output map's
  (Convolution), the input map's (Deconvolution: each input pixel scatters the whole kernel)
  or 1 (InnerProduct), and N the batch;
* backward: the weight gradient costs as much as the forward pass, the input gradient as much
  again, except where the bottom is a data top (nothing to propagate into); so 3x forward for
  most layers, 2x for the first;
* everything else (biases, activations, pooling, unpooling, losses, the SGD update) is left
  out: it is memory-bound and under 1 % of the multiply-adds of these nets.

A layer whose parameters are shared (the Siamese net's second channel) is counted again: it
runs again.
"""
import math

from .inspect import analyse
from .schema import parse_net

_WEIGHTED = ("Convolution", "Deconvolution", "InnerProduct")
_DATA = ("HDF5Data", "Input", "Data", "Slice")


def layer_flops(info):
    """[{name, type, forward, backward}] (FLOPs per iteration) of an ``inspect`` analysis."""
    blobs = info["blobs"]
    data_tops = {t for layer in info["layers"] if layer["type"] in _DATA for t in layer["top"]}
    out = []
    for layer in info["layers"]:
        if layer["type"] not in _WEIGHTED:
            continue
        batch = blobs[layer["bottom"][0]][0]
        if layer["type"] == "Convolution":
            positions = math.prod(layer["output"][2:])
        elif layer["type"] == "Deconvolution":
            positions = math.prod(blobs[layer["bottom"][0]][2:])
        else:
            positions = 1
        forward = 2 * layer["weights"] * positions * batch
        backward = forward * (1 if layer["bottom"][0] in data_tops else 2)
        out.append({"name": layer["name"], "type": layer["type"], "forward": forward, "backward": backward})
    return out


def iteration_flops(net_path, batch=100):
    """{"forward", "total", "layers"}: FLOPs of one SGD iteration of the net in ``net_path``."""
    layers = layer_flops(analyse(parse_net(net_path), where=str(net_path), batch=batch))
    forward = sum(layer["forward"] for layer in layers)
    return {"forward": forward, "total": forward + sum(layer["backward"] for layer in layers), "layers": layers}
