"""Compare `caffe-cae upgrade` with the real Caffe's upgrade_net_proto_text on Caffe nets.

    python tools/compare_upgrade.py NET.prototxt ... [--engine-dir DIR]

For each file: ours (the CLI's result, Reshape fix included) and the engine's
upgrade_net_proto_text, both parsed with the project's schema and compared as messages.
Prints one row per file: file | ours | Caffe | equal. "equal but Reshape" means equal once
the paper's Reshape fix (which Caffe does not make) is left out. Needs the engine
(`make engine`, or --engine-dir with a built rootfs engine).
"""
import argparse
import os
import subprocess
import sys
import tempfile

from caffe_cae.errors import CaeError
from caffe_cae.schema import NetParameter, parse_text
from caffe_cae.upgrade import upgrade


def caffe_upgrade(eng, path, work):
    """(NetParameter, None) from the engine's upgrade_net_proto_text, or (None, its last error line)."""
    out = os.path.join(work, "caffe.prototxt")
    if os.path.exists(out):
        os.remove(out)
    proc = eng.run(["upgrade_net_proto_text", os.path.abspath(path), out], cwd=work,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    if proc.returncode != 0 or not os.path.exists(out):
        lines = [line for line in proc.stderr.splitlines() if "Error parsing" in line or "Check failed" in line]
        lines = lines or [line for line in proc.stderr.splitlines() if line.strip()] or ["exit %d" % proc.returncode]
        return None, lines[0].split("] ", 1)[-1][:160]
    return parse_text(out, NetParameter), None


def ours(path):
    """(upgraded with the Reshape fix, without it) or the refusal's one line."""
    try:
        net = parse_text(path, NetParameter)
        return upgrade(net), upgrade(net, reshape_fix=False)
    except CaeError as exc:
        return str(exc)


def compare(eng, path, work):
    mine = ours(path)
    theirs, error = caffe_upgrade(eng, path, work)
    if isinstance(mine, str):
        return "refused: " + mine, "fails: " + error if error else "upgrades", "-"
    layers = "%d layers" % len(mine[0].layer)
    if theirs is None:
        return layers, "fails: " + error, "-"
    if mine[0] == theirs:
        return layers, "upgrades", "equal"
    if mine[1] == theirs:
        return layers, "upgrades", "equal but Reshape"
    return layers, "upgrades", "DIFFERENT"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--engine-dir", help="a built rootfs engine directory (default: the checkout's engine)")
    args = parser.parse_args(argv)
    from caffe_cae.engine import RootfsEngine, get_engine
    eng = RootfsEngine(args.engine_dir) if args.engine_dir else get_engine(build=False)
    counts = {}
    with tempfile.TemporaryDirectory(dir="/tmp") as work:
        for path in args.files:
            row = compare(eng, path, work)
            counts[row[2]] = counts.get(row[2], 0) + 1
            print(" | ".join((path,) + row), flush=True)
    print("; ".join("%s: %d" % item for item in sorted(counts.items())))
    return 1 if "DIFFERENT" in counts else 0


if __name__ == "__main__":
    sys.exit(main())
