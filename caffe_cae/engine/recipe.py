"""The engine's recipe: which files define it, their hash (the cache key of the rootfs engines and the
images), the cache directory, and the Debian mirror the recipe is built from."""
import glob
import hashlib
import importlib.util
import os
import re

from .. import PACKAGE_DIR
from ..errors import CaeError

#: Debian release and variant of the root file system and the images' base (part of the recipe hash).
SUITE = "bullseye"
VARIANT = "minbase"
#: Bump to force a rebuild when the way the engine is built from the recipe changes.
BUILD_FORMAT = "1"
PREFIX = "/opt/caffe"
CAFFE_PYTHON_DIR = PREFIX + "/lib/python3/dist-packages"
RECIPE_IN_ROOTFS = "/opt/caffe-cae/recipe"
#: Compute capabilities of a GPU engine: all that Debian bullseye's CUDA 11.2 compiles for since
#: Pascal; the PTX of the last is compiled at load by newer GPUs (Hopper).
GPU_ARCHS = "60 61 70 75 80 86"
GPU_ONLY_FILES = ("docker/cuda-toolkit.sh",)
#: The project's schema: the engine takes only its Unpooling definitions (see schema_fragment).
SCHEMA = "caffe_cae/proto/caffe_cae.proto"


def recipe_path(rel):
    """The file read for the recipe file ``rel`` (a repository-relative name, as hashed): under the
    package, whose docker/ is the repository's docker/ (a link in a checkout, a copy in a wheel)."""
    return os.path.join(PACKAGE_DIR, rel[len("caffe_cae/"):] if rel.startswith("caffe_cae/") else rel)


def recipe_files(gpu=False):
    """The files whose content defines the engine (sorted repository-relative paths)."""
    files = ["docker/build-caffe.sh", "docker/patch-caffe.py", "caffe_cae/proto/caffe_cae.proto"]
    files += list(GPU_ONLY_FILES) if gpu else []
    layer_dir = recipe_path("docker/unpooling")
    if os.path.isdir(layer_dir):
        files += ["docker/unpooling/" + n for n in os.listdir(layer_dir)
                  if n.endswith((".hpp", ".cpp", ".cu"))]
    return sorted(files)


def recipe_contents(gpu=False):
    """{repository-relative path: bytes} of the recipe files, read once; the schema's entry is its
    fragment (schema_fragment), so what is hashed is what the build reads."""
    out = {}
    for rel in recipe_files(gpu):
        path = recipe_path(rel)
        try:
            with open(path, "rb") as f:
                out[rel] = f.read()
        except OSError as exc:
            raise CaeError("%s: cannot read engine recipe file (%s)" % (path, exc.strerror))
    out[SCHEMA] = schema_fragment(recipe_path(SCHEMA))
    return out


def schema_fragment(path):
    """The part of the project's schema that the engine is built from: the UnpoolingParameter message
    and the numbers of its fields and V1 enum value, as docker/patch-caffe.py reads them (its own
    schema_facts, loaded from the recipe), written back as a small proto file that script accepts.
    So the rest of the schema (every other Caffe message) can grow without rebuilding the engine."""
    spec = importlib.util.spec_from_file_location("patch_caffe", recipe_path("docker/patch-caffe.py"))
    patch_caffe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(patch_caffe)
    try:
        facts = patch_caffe.schema_facts(path)
    except SystemExit as exc:  # the script's one-line refusal
        raise CaeError(str(exc.code))
    text = ("// The engine's part of %s (caffe-cae engine recipe).\n%s\n"
            "message LayerParameter {\n  optional UnpoolingParameter unpooling_param = %d;\n}\n"
            "message V1LayerParameter {\n  enum LayerType {\n    UNPOOLING = %d;\n  }\n"
            "  optional UnpoolingParameter unpooling_param = %d;\n}\n"
            % (SCHEMA, facts["message"], facts["modern"], facts["v1_enum"], facts["v1"]))
    return text.encode()


def recipe_in_engine(rel):
    """Where the recipe file ``rel`` lies in the recipe directory of a build (flat, as build-caffe.sh
    expects: build-caffe.sh, patch-caffe.py, caffe_cae.proto, unpooling/...)."""
    return rel.replace("docker/", "", 1).replace("caffe_cae/proto/", "", 1)


def digest(parts):
    """First 16 hex digits of the sha256 of ``parts``: a header string, then {name: bytes}."""
    header, files = parts
    h = hashlib.sha256(header.encode())
    for rel, data in sorted(files.items()):
        h.update(rel.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    return h.hexdigest()[:16]


def recipe_hash(gpu=False, contents=None, archs=None):
    """The rootfs engine's key: the recipe files (names and contents), the suite and, for a GPU
    engine, its compute capabilities (``archs``, default GPU_ARCHS)."""
    header = "caffe-cae engine %s %s %s %s\n" % (BUILD_FORMAT, SUITE, VARIANT, "gpu" if gpu else "cpu")
    if gpu:
        header += "archs %s\n" % " ".join((archs or GPU_ARCHS).split())
    return digest((header, contents or recipe_contents(gpu)))


def cache_root():
    """$CAFFE_CAE_CACHE, else ~/.cache/caffe-cae."""
    return os.path.abspath(os.environ.get("CAFFE_CAE_CACHE") or
                           os.path.join(os.path.expanduser("~"), ".cache", "caffe-cae"))


def engine_dir(gpu=False, contents=None, archs=None):
    """Where the root file system engine for the current recipe lives (built or not)."""
    return os.path.join(cache_root(), "engine", recipe_hash(gpu, contents, archs) + ("-gpu" if gpu else ""))


#: Suites of Debian's own archive: an apt source for one of them is a Debian mirror (the
#: -security archive is not one, nor another distribution's or vendor's repository).
DEBIAN_SUITES = ("jessie", "stretch", "buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
                 "oldoldstable", "oldstable", "stable", "testing", "unstable", "experimental")
_SUITE_SUFFIXES = ("-updates", "-backports", "-proposed-updates", "-backports-sloppy")


def _debian_suite(suite):
    for suffix in _SUITE_SUFFIXES:
        if suite.endswith(suffix):
            suite = suite[:-len(suffix)]
            break
    return suite in DEBIAN_SUITES


def apt_source_files(apt_dir="/etc/apt"):
    """The host's apt source files in apt's order: sources.list, then sources.list.d/ (sorted)."""
    files = [os.path.join(apt_dir, "sources.list")]
    files += sorted(glob.glob(os.path.join(apt_dir, "sources.list.d", "*.list")) +
                    glob.glob(os.path.join(apt_dir, "sources.list.d", "*.sources")))
    return [f for f in files if os.path.isfile(f)]


def parse_apt_sources(path):
    """[(types, uris, suites)] of the enabled entries of an apt source file: one-line format
    (``deb [options] URI SUITE COMPONENT...``) or, for ``*.sources``, deb822 paragraphs."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return []
    entries = []
    if path.endswith(".sources"):
        for para in re.split(r"\n[ \t]*\n", text):
            fields, key = {}, None
            for line in para.splitlines():
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                if line[0] in " \t" and key:
                    fields[key] += " " + line.strip()
                elif ":" in line:
                    key, value = line.split(":", 1)
                    key = key.strip().lower()
                    fields[key] = value.strip()
            if fields.get("enabled", "yes").lower() == "no":
                continue
            entries.append((fields.get("types", "").split(), fields.get("uris", "").split(),
                            fields.get("suites", "").split()))
    else:
        for line in text.splitlines():
            m = re.match(r"\s*(deb|deb-src)\s+(?:\[[^\]]*\]\s*)?(\S+)\s+(\S+)", line.split("#", 1)[0])
            if m:
                entries.append(([m.group(1)], [m.group(2)], [m.group(3)]))
    return entries


def debian_mirror(apt_dir="/etc/apt"):
    """The Debian mirror for debootstrap: $CAFFE_CAE_DEBIAN_MIRROR, else the first URI of the host's
    apt sources that serves a Debian suite (see DEBIAN_SUITES). CaeError when there is none."""
    if os.environ.get("CAFFE_CAE_DEBIAN_MIRROR"):
        return os.environ["CAFFE_CAE_DEBIAN_MIRROR"]
    files = apt_source_files(apt_dir)
    for path in files:
        for types, uris, suites in parse_apt_sources(path):
            if "deb" in types and any(_debian_suite(s) for s in suites):
                for uri in uris:
                    if re.match(r"(https?|ftp|file):", uri):
                        return uri
    raise CaeError("no Debian mirror to build the engine from: none of %s names one (a deb entry for a Debian "
                   "suite such as bookworm); set CAFFE_CAE_DEBIAN_MIRROR to a Debian mirror's URL"
                   % (", ".join(files) or "%s/sources.list, %s/sources.list.d/*.list|*.sources" % (apt_dir, apt_dir)))
