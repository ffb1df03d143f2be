"""`caffe-cae engine build | status | exec`: the real Caffe with Unpooling (see caffe_cae.engine)."""
import json
import os
import sys

import click

from .options import fail, run_guarded


@click.group("engine")
def cli():
    """Build, inspect and run the Caffe engine (BVLC Caffe 1.0 + Unpooling).

    CAFFE_CAE_ENGINE=auto|host|docker|rootfs chooses the engine (default auto).
    """


@cli.command("build")
@click.option("--kind", type=click.Choice(["rootfs", "docker"]), default=None,
              help="rootfs: the cached root file system (make engine); docker: the image (make docker). "
                   "Default: docker when CAFFE_CAE_ENGINE=docker, else rootfs.")
@click.option("--gpu", is_flag=True, help="The GPU engine: Caffe with Debian's CUDA 11.2 (no GPU needed to build).")
@click.option("--archs", default=None, metavar="'60 86'",
              help="With --gpu: the compute capabilities, the PTX of the last kept (default: all, %s)."
                   % "60 61 70 75 80 86")
@click.option("--force", is_flag=True, help="Rebuild even if the engine of this recipe is cached.")
@click.option("--prune", is_flag=True, help="Then remove cached rootfs engines of older recipes.")
def build(kind, gpu, archs, force, prune):
    """Build (or reuse) an engine: a Debian bullseye root file system in the cache, or the caffe-cae
    image (caffe-cae:cpu, caffe-cae:gpu), each cached by recipe hash.

    Inside the caffe-cae image (CAFFE_CAE_ENGINE=host) there is nothing to build: it checks the engine.
    """
    from .. import engine

    kind = kind or {"docker": "docker", "host": "host"}.get(os.environ.get("CAFFE_CAE_ENGINE"), "rootfs")
    if archs is not None and not gpu:
        fail("--archs: only with --gpu")
    if archs is not None and (not archs.split() or not all(a.isdigit() for a in archs.split())):
        fail("--archs %r: expected compute capabilities such as '60 86'" % archs)
    if kind == "host":
        eng = run_guarded(engine.get_engine, "host")
        info = run_guarded(eng.status)
        click.echo("host engine: %s (Caffe %s, %s)" % (eng.location, info.get("caffe_version"), info.get("mode")))
        return
    if kind == "docker":
        eng = run_guarded(engine.build_image, gpu=gpu, archs=archs, force=force)
        click.echo("docker engine: image %s" % eng.location)
        return
    eng = run_guarded(engine.build_rootfs, gpu=gpu, force=force, archs=archs)
    click.echo("rootfs engine: %s" % eng.location)
    if prune:
        engine.prune(eng.location)


@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.option("--no-build", is_flag=True, help="Do not build the rootfs engine if it is missing.")
def status(as_json, no_build):
    """Which engine, where, Caffe version, Unpooling registered, CPU or GPU."""
    from .. import engine

    eng = run_guarded(engine.get_engine, build=not no_build)
    info = run_guarded(eng.status)
    if as_json:
        click.echo(json.dumps(info, indent=1, sort_keys=True))
        return
    rows = [("engine", info["kind"]), ("location", info["location"]),
            ("caffe", info.get("caffe_version") or "not found"),
            ("unpooling", "registered" if info.get("unpooling") else "MISSING"),
            ("mode", info.get("mode", "?")), ("python", info.get("python", "?")),
            ("pycaffe", info.get("pycaffe", "?"))]
    if info.get("recipe"):
        rows.append(("recipe", "%s (built %s in %s s)" % (info["recipe"], info.get("built"),
                                                          info.get("build_seconds"))))
    for key, value in rows:
        click.echo("%-10s %s" % (key, value))
    if not info.get("unpooling"):
        raise SystemExit(1)


@cli.command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(argv):
    """Run CMD ARGS... inside the engine: caffe-cae engine exec -- CMD ARGS...

    The current directory, the repository and the data directory are visible at the
    same paths; the exit status is CMD's.
    """
    from .. import engine

    eng = run_guarded(engine.get_engine)
    cmd = run_guarded(eng.command, list(argv), cwd=os.getcwd())
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        fail("%s: cannot run (%s)" % (cmd[0], exc.strerror))
