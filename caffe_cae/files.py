"""Every file the package writes goes through here: atomic, and bad paths in one line.

Atomic: a temporary file in the target's folder, then a rename, so a reader (or an
interrupted writer) never sees half a file. The file gets the mode ``open()`` would give it,
0666 less the user's umask (``mkstemp`` alone makes it 0600). An output path that cannot be written (its
folder is a file or cannot be made, it is a directory, the file system refuses) raises one
CaeError naming the path and why; the CLI prints it as one line and exits 2.

Standard library only (h5py is imported where HDF5 is written), so code running inside the
Caffe engine can use it too.
"""
import contextlib
import json
import os
import shutil
import tempfile

from .errors import CaeError


def _why(exc):
    return exc.strerror or str(exc)


def ensure_dir(path, what="output directory"):
    """Create the directory ``path`` (and its parents); CaeError naming it when that fails."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        why = "a file is in the way" if isinstance(exc, FileExistsError) else _why(exc)
        raise CaeError("%s: cannot create the %s (%s)" % (path, what, why)) from None
    return path


def check_dir(path, what="output directory"):
    """CaeError unless the directory ``path`` exists or can be made; made for the check and
    removed again, so that a bad path fails before long work and a good one is left as it was."""
    made = []
    folder = os.path.abspath(path)
    while not os.path.lexists(folder):
        made.append(folder)
        folder = os.path.dirname(folder)
    ensure_dir(path, what)
    for folder in made:  # deepest first
        os.rmdir(folder)


def check_writable(path):
    """CaeError unless a file can be written at ``path`` (its folder is made): used before
    long work whose result goes there."""
    if os.path.isdir(path):
        raise CaeError("%s: is a directory; expected a file path to write" % path)
    os.unlink(_make_temporary(path))


TMP_PREFIX = ".tmp-"


def _temporary(path):
    """(folder, prefix, suffix) of the temporary names :func:`atomic_path` uses for ``path``."""
    return os.path.dirname(os.path.abspath(path)), TMP_PREFIX, "-" + os.path.basename(path)


def _make_temporary(path):
    """An empty temporary file beside ``path`` (its folder made); CaeError when it cannot be."""
    folder, prefix, suffix = _temporary(path)
    ensure_dir(folder, "folder of %s" % path)
    try:
        handle, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=suffix)
    except OSError as exc:
        raise CaeError("%s: cannot write here (%s)" % (path, _why(exc))) from None
    os.close(handle)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    return tmp


def remove_temporaries(path):
    """Remove what writers of ``path`` that were killed left behind; returns the names removed."""
    folder, prefix, suffix = _temporary(path)
    try:
        names = [n for n in os.listdir(folder) if n.startswith(prefix) and n.endswith(suffix)]
    except OSError:
        return []
    for name in names:
        try:
            os.unlink(os.path.join(folder, name))
        except OSError:
            pass
    return names


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success it replaces ``path``, else it is removed."""
    tmp = _make_temporary(path)
    try:
        yield tmp
        if os.path.isdir(path):
            raise CaeError("%s: is a directory; expected a file path to write" % path)
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise CaeError("%s: cannot write (%s)" % (path, _why(exc))) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(text)


def write_bytes(path, data):
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as out:
            out.write(data)


def write_json(path, value, sort_keys=False):
    """Write ``value`` as indented JSON (and a final newline) to ``path`` atomically."""
    write_text(path, json.dumps(value, indent=1, sort_keys=sort_keys) + "\n")


def write_h5(path, fill):
    """Create an HDF5 file at ``path`` atomically; ``fill(h5file)`` writes its contents."""
    import h5py
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as out:
            fill(out)


def copy_file(source, path):
    """Copy ``source`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)
