"""The engine recipe without building it: the caffe.proto / upgrade_proto.cpp patch reads its
numbers from the project's schema, the cache keys follow the recipe, and the Dockerfile and
shell scripts pass hadolint and shellcheck."""
import os
import shutil
import subprocess
import sys

import pytest

from caffe_cae import REPO_ROOT, engine
from caffe_cae.errors import CaeError

from conftest import missing

PATCH = os.path.join(REPO_ROOT, "docker", "patch-caffe.py")
SCHEMA = os.path.join(REPO_ROOT, "caffe_cae", "proto", "caffe_cae.proto")

# The parts of BVLC Caffe 1.0's files that the patch touches, in their original form.
FAKE_PROTO = """syntax = "proto2";
package caffe;
message LayerParameter {
  optional string name = 1;
  optional ClipParameter clip_param = 148;
}
message V1LayerParameter {
  enum LayerType {
    NONE = 0;
    WINDOW_DATA = 24;
    THRESHOLD = 31;
  }
  optional LayerType type = 5;
  optional LossParameter loss_param = 42;
}
"""
FAKE_UPGRADE = """bool UpgradeV1LayerParameter(const V1LayerParameter& v1_layer_param,
                             LayerParameter* layer_param) {
  if (v1_layer_param.has_transform_param()) {
    layer_param->mutable_transform_param()->CopyFrom(
        v1_layer_param.transform_param());
  }
}
const char* UpgradeV1LayerType(const V1LayerParameter_LayerType type) {
  switch (type) {
  case V1LayerParameter_LayerType_THRESHOLD:
    return "Threshold";
  default:
    return "";
  }
}
"""


def fake_tree(root):
    for d in ("src/caffe/proto", "src/caffe/util", "src/caffe/layers", "src/caffe/test", "include/caffe/layers"):
        os.makedirs(os.path.join(root, d))
    with open(os.path.join(root, "src/caffe/proto/caffe.proto"), "w") as f:
        f.write(FAKE_PROTO)
    with open(os.path.join(root, "src/caffe/util/upgrade_proto.cpp"), "w") as f:
        f.write(FAKE_UPGRADE)
    return root


def patch(src, schema=SCHEMA):
    return subprocess.run([sys.executable, PATCH, src, schema, os.path.join(REPO_ROOT, "docker", "unpooling")],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)


def read(path):
    with open(path) as f:
        return f.read()


def test_patch_takes_numbers_from_schema_and_is_idempotent(tmp_path):
    src = fake_tree(str(tmp_path / "caffe"))
    proc = patch(src)
    assert proc.returncode == 0, proc.stderr
    proto = read(os.path.join(src, "src/caffe/proto/caffe.proto"))
    assert "optional UnpoolingParameter unpooling_param = 150;" in proto.split("message V1LayerParameter")[0]
    v1 = proto.split("message V1LayerParameter")[1].split("message UnpoolingParameter")[0]
    assert "UNPOOLING = 42;" in v1 and "optional UnpoolingParameter unpooling_param = 44;" in v1
    assert "optional uint32 unpool_size = 12;" in proto
    upgrade = read(os.path.join(src, "src/caffe/util/upgrade_proto.cpp"))
    assert 'case V1LayerParameter_LayerType_UNPOOLING:  // caffe-cae\n    return "Unpooling";' in upgrade
    assert "mutable_unpooling_param()->CopyFrom" in upgrade
    for rel in ("include/caffe/layers/unpooling_layer.hpp", "src/caffe/layers/unpooling_layer.cpp",
                "src/caffe/layers/unpooling_layer.cu", "src/caffe/test/test_unpooling_layer.cpp"):
        assert os.path.isfile(os.path.join(src, rel))
    again = patch(src)
    assert again.returncode == 0 and "already patched" in again.stdout
    assert read(os.path.join(src, "src/caffe/proto/caffe.proto")) == proto


def test_patch_builds_from_the_recipe_fragment_of_the_schema(tmp_path):
    """The engine is built from the schema's fragment (recipe_contents), which the patch accepts as it
    accepts the whole schema: the same patched caffe.proto."""
    fragment = str(tmp_path / "fragment.proto")
    with open(fragment, "wb") as f:
        f.write(engine.recipe_contents()["caffe_cae/proto/caffe_cae.proto"])
    whole, part = fake_tree(str(tmp_path / "whole")), fake_tree(str(tmp_path / "part"))
    assert patch(whole).returncode == 0 and patch(part, fragment).returncode == 0
    proto = "src/caffe/proto/caffe.proto"
    assert read(os.path.join(part, proto)) == read(os.path.join(whole, proto))
    assert "UNPOOLING = 42;" in read(os.path.join(part, proto))


def test_patch_follows_a_changed_schema_number(tmp_path):
    schema = str(tmp_path / "schema.proto")
    text = read(SCHEMA)
    assert text.count("unpooling_param = 150;") == 1
    with open(schema, "w") as f:
        f.write(text.replace("unpooling_param = 150;", "unpooling_param = 151;"))
    src = fake_tree(str(tmp_path / "caffe"))
    assert patch(src, schema).returncode == 0
    assert "unpooling_param = 151;" in read(os.path.join(src, "src/caffe/proto/caffe.proto"))


def test_patch_refuses_a_taken_field_number(tmp_path):
    src = fake_tree(str(tmp_path / "caffe"))
    proto = os.path.join(src, "src/caffe/proto/caffe.proto")
    with open(proto, "w") as f:
        f.write(FAKE_PROTO.replace("clip_param = 148;", "clip_param = 150;"))
    proc = patch(src)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "patch-caffe: %s: field number 150 is already used in LayerParameter" % proto]


def test_recipe_hash_covers_schema_and_layer(tmp_path, monkeypatch):
    copy = str(tmp_path / "caffe_cae")  # a package directory with the recipe, as a wheel installs it
    original = engine.recipe_hash()
    for rel in engine.recipe_files(gpu=True):
        dest = os.path.join(copy, os.path.relpath(engine.recipe_path(rel), engine.recipe.PACKAGE_DIR))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(engine.recipe_path(rel), dest)
    monkeypatch.setattr(engine.recipe, "PACKAGE_DIR", copy)
    assert "caffe_cae/proto/caffe_cae.proto" in engine.recipe_files()
    assert "docker/unpooling/unpooling_layer.cu" in engine.recipe_files()
    first = engine.recipe_hash()
    assert first == original  # the hash names files by their place in the repository, wherever read
    assert engine.recipe_hash() == first
    assert engine.recipe_hash(gpu=True) != first
    assert "docker/cuda-toolkit.sh" in engine.recipe_files(gpu=True) and "docker/cuda-toolkit.sh" not in \
        engine.recipe_files()
    assert engine.recipe_hash(gpu=True, archs="86") not in (first, engine.recipe_hash(gpu=True))
    assert engine.recipe_hash(gpu=True, archs="60 61 70 75 80 86") == engine.recipe_hash(gpu=True)
    gpu = engine.recipe_hash(gpu=True)
    with open(os.path.join(copy, "docker/cuda-toolkit.sh"), "a") as f:
        f.write("\n")
    assert engine.recipe_hash() == first and engine.recipe_hash(gpu=True) != gpu  # GPU-only file
    schema = os.path.join(copy, "proto/caffe_cae.proto")
    with open(schema, "a") as f:  # the schema beyond Unpooling is not the engine's: no rebuild
        f.write("\n// changed\nmessage SomeOtherParameter {\n  optional uint32 x = 1;\n}\n")
    assert engine.recipe_hash() == first
    with open(schema) as f:
        text = f.read()
    with open(schema, "w") as f:  # an Unpooling field number is
        f.write(text.replace("unpooling_param = 150;", "unpooling_param = 151;"))
    second = engine.recipe_hash()
    assert second != first
    with open(os.path.join(copy, "docker/unpooling/unpooling_layer.cpp"), "a") as f:
        f.write("\n")
    assert engine.recipe_hash() not in (first, second)
    monkeypatch.setenv("CAFFE_CAE_CACHE", str(tmp_path / "cache"))
    assert engine.engine_dir() == os.path.join(str(tmp_path / "cache"), "engine", engine.recipe_hash())
    assert engine.find_rootfs() is None


def test_recipe_is_the_repository_docker_dir():
    """caffe_cae/docker and caffe_cae/templates are the top-level directories (links), so the checkout
    and a wheel (which copies them) read the same recipe and templates."""
    for name in ("docker", "templates"):
        assert os.path.realpath(os.path.join(REPO_ROOT, "caffe_cae", name)) == os.path.join(REPO_ROOT, name)
    for rel in engine.recipe_files():
        assert os.path.samefile(engine.recipe_path(rel), os.path.join(REPO_ROOT, rel))


DEB822 = """# the Debian images' default, with a disabled entry and the security archive first
Types: deb
URIs: http://mirror.invalid/disabled
Suites: bookworm
Components: main
Enabled: no

Types: deb
# a comment inside the paragraph
URIs: http://security.invalid/debian-security
Suites: bookworm-security
Components: main

Types: deb deb-src
URIs:
 https://ftp.example.org/debian/
 http://second.example.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
ONE_LINE = """# vendor repositories and the security archive are not Debian mirrors
deb [arch=amd64 signed-by=/usr/share/keyrings/cloud.gpg] https://packages.cloud.google.com/apt cloud-sdk main
deb http://security.debian.org/debian-security bullseye-security main
deb-src http://src-only.example.org/debian bullseye main
deb [ arch=amd64 ] http://ftp.de.debian.org/debian/ bullseye main contrib # trailing comment
"""


def _apt_dir(tmp_path, files):
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    for rel, text in files.items():
        (apt / rel).write_text(text)
    return str(apt)


def test_debian_mirror_from_deb822_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("CAFFE_CAE_DEBIAN_MIRROR", raising=False)
    vendor = "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\nComponents: main\n"
    apt = _apt_dir(tmp_path, {"sources.list.d/debian.sources": DEB822, "sources.list.d/nodesource.sources": vendor,
                              "sources.list.d/a.list.disabled": "deb http://not-read.example.org/debian sid main\n"})
    entries = engine.parse_apt_sources(os.path.join(apt, "sources.list.d/debian.sources"))
    assert entries == [(["deb"], ["http://security.invalid/debian-security"], ["bookworm-security"]),
                       (["deb", "deb-src"], ["https://ftp.example.org/debian/", "http://second.example.org/debian"],
                        ["bookworm", "bookworm-updates"])]
    assert engine.debian_mirror(apt) == "https://ftp.example.org/debian/"
    monkeypatch.setenv("CAFFE_CAE_DEBIAN_MIRROR", "http://override.example.org/debian")
    assert engine.debian_mirror(apt) == "http://override.example.org/debian"


def test_debian_mirror_from_one_line_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("CAFFE_CAE_DEBIAN_MIRROR", raising=False)
    apt = _apt_dir(tmp_path, {"sources.list": ONE_LINE, "sources.list.d/zz.sources": DEB822})
    assert engine.parse_apt_sources(os.path.join(apt, "sources.list"))[-1] == (
        ["deb"], ["http://ftp.de.debian.org/debian/"], ["bullseye"])
    assert engine.debian_mirror(apt) == "http://ftp.de.debian.org/debian/"  # sources.list comes first


def test_no_debian_mirror_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("CAFFE_CAE_DEBIAN_MIRROR", raising=False)
    apt = _apt_dir(tmp_path, {"sources.list": "deb http://archive.ubuntu.com/ubuntu jammy main\n"})
    with pytest.raises(CaeError) as err:
        engine.debian_mirror(apt)
    message = str(err.value)
    assert "\n" not in message and os.path.join(apt, "sources.list") in message
    assert "CAFFE_CAE_DEBIAN_MIRROR" in message
    for name in os.listdir(os.path.dirname(engine.__file__)):
        if name.endswith(".py"):
            with open(os.path.join(os.path.dirname(engine.__file__), name), encoding="utf-8") as f:
                assert "deb.debian.org" not in f.read(), name  # the mirror comes from the host, not the code


def _tool(name):
    found = shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))
    if not found:
        missing("%s is not installed (CI installs it: .ci/run, setup.cfg [test])" % name)
    return found


def test_hadolint():
    proc = subprocess.run([_tool("hadolint"), os.path.join(REPO_ROOT, "docker", "Dockerfile")],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert proc.returncode == 0, proc.stdout


def test_shellcheck():
    scripts = [os.path.join(REPO_ROOT, "docker", name) for name in ("build-caffe.sh", "cuda-toolkit.sh")]
    scripts += [os.path.join(REPO_ROOT, ".ci", "run")]
    proc = subprocess.run([_tool("shellcheck")] + scripts, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True)
    assert proc.returncode == 0, proc.stdout


def test_one_dockerfile_for_both_images():
    """docker/Dockerfile: one base argument, debian:bullseye by default (no nvidia/cuda base) or a rootfs
    engine's file system; the engine built by the rootfs engine's scripts, GPU=1 adding Debian's CUDA."""
    text = read(os.path.join(REPO_ROOT, "docker", "Dockerfile"))
    assert [line for line in text.splitlines() if line.startswith("FROM ")] == ["FROM ${BASE}"]
    assert "ARG BASE=debian:bullseye" in text.splitlines()
    assert "nvidia/cuda" not in text.replace("an nvidia/cuda base", "")
    assert "bash /opt/caffe-cae/recipe/cuda-toolkit.sh" in text and "build-caffe.sh --gpu" in text and 'ARG CUDA_ARCH_BIN="%s"' % engine.GPU_ARCHS \
        in text
    assert sorted(os.listdir(os.path.join(REPO_ROOT, "docker"))) == [
        "Dockerfile", "build-caffe.sh", "cuda-toolkit.sh", "patch-caffe.py", "unpooling"]
    assert engine.rootfs.build_command(True, "/r") == ("bash /r/cuda-toolkit.sh && bash /r/build-caffe.sh --gpu /r")


def test_prune_keeps_only_the_given_engine(tmp_path):
    parent = tmp_path / "engine"
    for name in ("aaaa", "bbbb", ".tmp-cccc-1"):
        (parent / name).mkdir(parents=True)
    (parent / "aaaa" / "engine.json").write_text("{}")
    (parent / "bbbb" / "engine.json").write_text("{}")
    removed = engine.prune(str(parent / "bbbb"), log=open(os.devnull, "w"))
    assert removed == [str(parent / "aaaa")]
    assert sorted(p.name for p in parent.iterdir()) == [".lock", ".tmp-cccc-1", "bbbb"]
    for name in ("dddd-gpu", "eeee-gpu"):  # the GPU engines are pruned apart from the CPU ones
        (parent / name).mkdir()
        (parent / name / "engine.json").write_text("{}")
    assert engine.prune(str(parent / "eeee-gpu"), log=open(os.devnull, "w")) == [str(parent / "dddd-gpu")]
    assert sorted(p.name for p in parent.iterdir()) == [".lock", ".tmp-cccc-1", "bbbb", "eeee-gpu"]


def _cli(*args, env=None):
    full = dict(os.environ, PYTHONPATH=REPO_ROOT, **(env or {}))
    return subprocess.run([sys.executable, "-m", "caffe_cae"] + list(args), env=full, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True)


def test_unavailable_kinds_say_what_to_do():
    proc = _cli("engine", "exec", "--", "true", env={"CAFFE_CAE_ENGINE": "host",
                                                     "CAFFE_CAE_HOST_PYTHON": "no-such-python"})
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["caffe-cae: error: CAFFE_CAE_ENGINE=host: no-such-python has no pycaffe "
                                        "with an Unpooling layer; use CAFFE_CAE_ENGINE=rootfs (make engine) or docker"]
    proc = _cli("engine", "build", "--archs", "86")
    assert proc.returncode == 2 and proc.stderr.splitlines() == ["caffe-cae: error: --archs: only with --gpu"]
    proc = _cli("engine", "build", "--gpu", "--archs", "sm_86")
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        "caffe-cae: error: --archs 'sm_86': expected compute capabilities such as '60 86'"]
    no_docker = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                if not os.path.exists(os.path.join(p, "docker")))
    proc = _cli("engine", "status", env={"CAFFE_CAE_ENGINE": "docker", "PATH": no_docker})
    assert proc.returncode == 2
    assert "docker not found" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_docker_context_is_the_recipe_and_the_harness():
    """Every COPY of docker/Dockerfile finds its files in the context caffe-cae assembles (recipe/ as
    the rootfs engine lays it out, harness/ the package with its templates and recipe); the image's
    hash follows the context and the build arguments."""
    ctx = engine.docker.image_context()
    for line in read(os.path.join(REPO_ROOT, "docker", "Dockerfile")).splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                # wheels/: pip download's, added when the image is built (tests/test_docker.py)
                assert src == "wheels/" or any(k.startswith(src) for k in ctx), src
    assert sorted(k for k in ctx if k.startswith("recipe/")) == sorted(
        "recipe/" + engine.recipe.recipe_in_engine(rel) for rel in engine.recipe_files(gpu=True))
    for rel in ("setup.cfg", "caffe_cae/engine/docker.py", "templates/modern.prototxt.j2", "docker/Dockerfile"):
        assert "harness/" + rel in ctx, rel
    assert ctx["harness/caffe_cae/docker"] == ("link", "../docker")
    assert not any("__pycache__" in k or k.endswith(".pyc") for k in ctx)
    cpu = engine.image_hash()
    assert cpu == engine.image_hash(context=engine.docker.image_context())
    assert len({cpu, engine.image_hash(True), engine.image_hash(True, "86")}) == 3
    changed = dict(engine.docker.image_context(), **{"harness/caffe_cae/paper.py": b"changed"})
    assert engine.image_hash(context=changed) != cpu
    # the engine's origin is part of the image: compiled in it, or a rootfs engine's file system
    assert engine.docker.build_args(base=None)["ENGINE"] == "build"
    assert engine.docker.build_args(base="caffe-cae-engine:x")["BASE"] == "caffe-cae-engine:x"
    assert len({engine.image_hash(base=None), engine.image_hash(base="caffe-cae-engine:x"),
                engine.image_hash(base="caffe-cae-engine:y")}) == 3
