"""Read and write Caffe's binary weight files (.caffemodel) and solver states (.solverstate).

Backend-neutral (numpy and the project's schema only), so that a run can start in one
backend and resume or be extracted in the other:

- ``read_caffemodel(path)`` -> ``[(layer name, [float32 arrays])]`` for every layer record
  that carries blobs, in file order; both modern ``layer`` and V1 ``layers`` records;
  blob shapes from ``shape`` or the legacy num/channels/height/width; ``data`` or
  ``double_data``.
- ``write_caffemodel(path, name, layers)`` writes a binary NetParameter; ``layers`` is a list
  of ``(LayerParameter or layer name, [arrays])``: a LayerParameter is copied (as Caffe's
  ``Net::ToProto`` does) with its blobs replaced; a plain name writes ``name`` + blobs.
- ``read_solverstate`` / ``write_solverstate``: SolverState (``iter``, ``learned_net``,
  ``history`` blobs in the order of the net's learnable parameters, ``current_step``).

Writes are atomic (temporary file, then rename). Bad files raise CaeError naming the file.
"""

import numpy as np
from google.protobuf.message import DecodeError

from . import files
from .errors import CaeError
from .proto import caffe_cae_pb2 as pb


def blob_to_array(blob, where="blob"):
    """A BlobProto's data as a float32 array of its shape (legacy 4-D shape if no ``shape``)."""
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    elif blob.num or blob.channels or blob.height or blob.width:
        shape = (blob.num, blob.channels, blob.height, blob.width)
    else:
        shape = (len(blob.data) or len(blob.double_data),)
    values = blob.data if len(blob.data) else blob.double_data
    arr = np.array(values, dtype=np.float32)
    if arr.size != int(np.prod(shape)):
        raise CaeError("%s: %d values for shape %s" % (where, arr.size, shape))
    return arr.reshape(shape)


def array_to_blob(arr, blob):
    """Fill BlobProto ``blob`` with ``arr`` (shape + float data), as Caffe's Blob::ToProto."""
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    blob.Clear()
    blob.shape.dim.extend(int(d) for d in arr.shape)
    blob.data.extend(arr.ravel().tolist())
    return blob


def _read_message(path, message, what):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise CaeError("%s: cannot read %s (%s)" % (path, what, exc.strerror)) from None
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise CaeError("%s: not a binary %s (%s)" % (path, what, exc)) from None
    return message


def read_caffemodel(path):
    """[(layer name, [arrays])] of the layer records with blobs, in file order."""
    net = _read_message(path, pb.NetParameter(), ".caffemodel (NetParameter)")
    out = []
    for records in (net.layer, net.layers):
        for lp in records:
            if len(lp.blobs):
                out.append((lp.name, [blob_to_array(b, "%s: layer %s blob %d" % (path, lp.name, i))
                                      for i, b in enumerate(lp.blobs)]))
    if not out and not len(net.layer) and not len(net.layers):
        raise CaeError("%s: no layer records; expected a .caffemodel" % path)
    return out


def write_caffemodel(path, name, layers):
    """Write a binary NetParameter named ``name`` with ``layers`` [(LayerParameter|name, arrays)]."""
    net = pb.NetParameter(name=name or "")
    for layer, arrays in layers:
        lp = net.layer.add()
        if isinstance(layer, str):
            lp.name = layer
        else:
            lp.CopyFrom(layer)
            del lp.blobs[:]
        for arr in arrays:
            array_to_blob(arr, lp.blobs.add())
    files.write_bytes(path, net.SerializeToString())
    return path


def read_solverstate(path):
    """{"iter", "learned_net", "history": [arrays], "current_step"} of a binary SolverState."""
    state = _read_message(path, pb.SolverState(), ".solverstate (SolverState)")
    return {"iter": int(state.iter), "learned_net": state.learned_net,
            "history": [blob_to_array(b, "%s: history blob %d" % (path, i))
                        for i, b in enumerate(state.history)],
            "current_step": int(state.current_step)}


def write_solverstate(path, iteration, learned_net, history, current_step=0):
    """Write a binary SolverState (history in the net's learnable-parameter order)."""
    state = pb.SolverState(iter=int(iteration), learned_net=learned_net or "",
                           current_step=int(current_step))
    for arr in history:
        array_to_blob(arr, state.history.add())
    files.write_bytes(path, state.SerializeToString())
    return path
