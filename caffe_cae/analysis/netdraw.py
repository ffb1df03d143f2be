"""The net diagram of Figs. 2-3: graphviz text of a parsed net (``net_dot``), drawn by ``dot``."""
import os
import shutil
import subprocess

from .. import caffe_rules
from ..errors import CaeError
from ..files import atomic_path
from ..schema import parse_net, syntax_of
from ..upgrade import upgrade

_ACTIVATIONS = ("Sigmoid", "TanH", "ReLU", "PReLU", "ELU", "AbsVal", "Power")


def _layer_note(layer):
    """A short parameter text for a diagram node (kernel x planes, units, pooling)."""
    try:
        if layer.type in ("Convolution", "Deconvolution"):
            p = layer.convolution_param
            k = list(p.kernel_size)[0] if len(p.kernel_size) else p.kernel_h
            return "%dx%dx%d" % (k, k, p.num_output)
        if layer.type == "InnerProduct":
            return "%d" % layer.inner_product_param.num_output
        if layer.type == "Pooling":
            p = layer.pooling_param
            return "%s %dx%d" % (p.PoolMethod.Name(p.pool), p.kernel_size, p.kernel_size)
        if layer.type == "Unpooling":
            p = layer.unpooling_param
            return "%s %dx%d" % (p.UnpoolMethod.Name(p.unpool), p.kernel_size, p.kernel_size)
    except (AttributeError, ValueError):
        return ""
    return ""


def _quote(text):
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def net_dot(net):
    """Graphviz text for a parsed NetParameter (TRAIN phase; legacy nets are upgraded first):
    layers as boxes (activations green, losses red, others blue), blobs as yellow octagons.
    A blob rewritten in place gets a new octagon per writer, like the panels of Fig. 11."""
    if syntax_of(net) == "legacy":
        net = upgrade(net, reshape_fix=False)
    lines = ["digraph %s {" % _quote(net.name or "net"), "  rankdir=TB; nodesep=0.25; ranksep=0.3;",
             '  node [fontname="Helvetica", fontsize=10];']
    version = {}
    for index, layer in enumerate(net.layer):
        if not caffe_rules.is_active(layer, "train"):
            continue
        lid = "L%d" % index
        if layer.type in _ACTIVATIONS:
            colour = "#b6e3a8"
        elif "Loss" in layer.type:
            colour = "#f4b6b6"
        else:
            colour = "#a9c8ef"
        note = _layer_note(layer)
        label = "%s\\n%s%s" % (layer.name, layer.type, ("\\n" + note) if note else "")
        lines.append('  %s [shape=box, style="filled", fillcolor="%s", label="%s"];'
                     % (lid, colour, label.replace('"', "'")))
        for bottom in layer.bottom:
            if bottom not in version:
                version[bottom] = 0
                lines.append('  %s [shape=octagon, style="filled", fillcolor="#f6e58d", label=%s];'
                             % (_quote("B:%s:0" % bottom), _quote(bottom)))
            lines.append("  %s -> %s;" % (_quote("B:%s:%d" % (bottom, version[bottom])), lid))
        for top in layer.top:
            version[top] = version.get(top, -1) + 1
            node = _quote("B:%s:%d" % (top, version[top]))
            lines.append('  %s [shape=octagon, style="filled", fillcolor="#f6e58d", label=%s];' % (node, _quote(top)))
            lines.append("  %s -> %s;" % (lid, node))
    lines.append("}")
    return "\n".join(lines) + "\n"


def dot_binary():
    """Path of graphviz ``dot``; CaeError when it is not installed."""
    path = shutil.which("dot")
    if path is None:
        raise CaeError("graphviz `dot` not found on PATH (needed for the net diagram): "
                       "apt-get install graphviz, or pass --no-diagram")
    return path


def draw_net(prototxt, folder, stem="net"):
    """net.dot, net.png and net.svg in ``folder`` from the run's prototxt; returns file names."""
    text = net_dot(parse_net(prototxt))
    dot = dot_binary()
    names = []
    for ext in ("dot", "png", "svg"):
        target = os.path.join(folder, "%s.%s" % (stem, ext))
        with atomic_path(target) as tmp:
            if ext == "dot":
                with open(tmp, "w", encoding="utf-8") as out:
                    out.write(text)
            else:
                proc = subprocess.run([dot, "-T" + ext, "-Gdpi=80", "-o", tmp], input=text.encode("utf-8"),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
                if proc.returncode != 0 or os.path.getsize(tmp) == 0:
                    raise CaeError("%s: graphviz dot failed: %s" % (prototxt, proc.stderr.decode("utf-8", "replace")
                                                                    .strip().splitlines()[-1:] or "no output"))
        names.append(os.path.basename(target))
    return names
