"""Atomic file writes: a temporary file in the target's folder, then a rename.

A reader (or an interrupted writer) never sees half a file. Standard library only (h5py is
imported where HDF5 is written), so code running inside the Caffe engine can use it too.
"""
import contextlib
import json
import os
import tempfile


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success it replaces ``path``, else it is removed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix="-" + os.path.basename(path))
    os.close(handle)
    try:
        yield tmp
        os.replace(tmp, path)
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
