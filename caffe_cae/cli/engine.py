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
@click.option("--gpu", is_flag=True, help="The GPU recipe (docker/Dockerfile.gpu; needs Docker and a GPU base image).")
@click.option("--force", is_flag=True, help="Rebuild the rootfs engine even if it is cached.")
@click.option("--prune", is_flag=True, help="Then remove cached engines of older recipes.")
def build(gpu, force, prune):
    """Build (or reuse) the Debian bullseye root file system engine in the cache."""
    from .. import engine

    eng = run_guarded(engine.build_rootfs, gpu=gpu, force=force)
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
