"""Caffe's HDF5Data for the torch backend: the rows of the listed files, in order, and the
batches' way onto the device."""
import os

import numpy as np

from ..errors import CaeError


class HDF5Source:
    """Caffe's HDF5Data without shuffle: rows of the listed files in order, wrapping around."""

    def __init__(self, lp, cwd, cache=None):
        import h5py
        p = lp.hdf5_data_param
        if p.shuffle:
            raise CaeError("layer %s: hdf5_data_param shuffle: true is not supported by the torch "
                           "backend" % lp.name)
        if not p.batch_size:
            raise CaeError("layer %s: hdf5_data_param batch_size is required" % lp.name)
        self.name, self.tops, self.batch = lp.name, list(lp.top), int(p.batch_size)
        src = os.path.join(cwd, p.source)
        try:
            with open(src) as f:
                files = [line.strip() for line in f if line.strip()]
        except OSError as exc:
            raise CaeError("layer %s: %s: cannot read HDF5 list file (%s)"
                           % (lp.name, p.source, exc.strerror)) from None
        if not files:
            raise CaeError("layer %s: %s lists no HDF5 files" % (lp.name, p.source))
        self.files = [os.path.join(cwd, f) for f in files]
        self._h5py = h5py
        self._cache = cache if cache is not None else {}
        self.file, self.row = 0, 0
        self.data = self._load(0)

    def _load(self, k):
        path = self.files[k]
        key = (os.path.abspath(path), tuple(self.tops))
        if key in self._cache:
            return self._cache[key]
        try:
            with self._h5py.File(path, "r") as f:
                arrays = []
                for top in self.tops:
                    if top not in f:
                        raise CaeError("layer %s: %s has no dataset %r" % (self.name, path, top))
                    arrays.append(np.ascontiguousarray(f[top][()], dtype=np.float32))
        except OSError as exc:
            raise CaeError("layer %s: %s: cannot read HDF5 file (%s)" % (self.name, path, exc)) from None
        n = arrays[0].shape[0]
        if n == 0 or any(a.shape[0] != n for a in arrays):
            raise CaeError("layer %s: %s: datasets %s are empty or differ in rows"
                           % (self.name, path, self.tops))
        if len(self.files) == 1:
            self._cache[key] = arrays
        return arrays

    def shapes(self):
        return [(self.batch,) + a.shape[1:] for a in self.data]

    def next_batch(self):
        """One batch per top (numpy float32), advancing like Caffe's HDF5DataLayer::Next."""
        parts = [[] for _ in self.tops]
        need = self.batch
        while need:
            n = self.data[0].shape[0]
            take = min(need, n - self.row)
            for j, a in enumerate(self.data):
                parts[j].append(a[self.row:self.row + take])
            need -= take
            self.row += take
            if self.row == n:
                self.row = 0
                if len(self.files) > 1:
                    self.file = (self.file + 1) % len(self.files)
                    self.data = self._load(self.file)
        return [p[0] if len(p) == 1 else np.concatenate(p) for p in parts]

    def skip(self, batches):
        """Advance by ``batches`` batches without reading them (resume at the same data order)."""
        rows = batches * self.batch
        if len(self.files) == 1:
            self.row = (self.row + rows) % self.data[0].shape[0]
            return
        while rows:
            n = self.data[0].shape[0]
            take = min(rows, n - self.row)
            rows -= take
            self.row += take
            if self.row == n:
                self.row = 0
                self.file = (self.file + 1) % len(self.files)
                self.data = self._load(self.file)

    def state(self):
        return {"file": self.file, "row": self.row}

    def set_state(self, state):
        self.file, self.row = int(state["file"]), int(state["row"])
        self.data = self._load(self.file)


def to_device(array, device):
    """A numpy batch on ``device``; to a CUDA device through pinned memory and asynchronously
    (a plain copy from pageable memory would wait for the device once per iteration)."""
    import torch
    t = torch.from_numpy(array)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
