"""Strict parsing of Caffe text files against the project's schema (caffe_cae.proto).

``parse_net`` and ``parse_solver`` accept a path or text and return messages of
:mod:`caffe_cae.proto.caffe_cae_pb2`; any unknown field or malformed value raises
CaeError with one line ``FILE:LINE:COL: message``. Both syntaxes parse as NetParameter:
legacy V1 layers land in ``net.layers``, modern ones in ``net.layer``.
"""
import os
import re

from google.protobuf import text_format

from .errors import CaeError
from .proto import caffe_cae_pb2 as pb

NetParameter = pb.NetParameter
SolverParameter = pb.SolverParameter

_POSITION = re.compile(r"^(\d+):(\d+)\s*:\s*")


def _read(source, filename):
    if filename is None and isinstance(source, (str, os.PathLike)) and "\n" not in str(source) \
            and os.path.exists(source):
        filename = str(source)
        try:
            with open(source, encoding="utf-8") as handle:
                return handle.read(), filename
        except (OSError, UnicodeDecodeError) as exc:
            raise CaeError(f"{filename}: cannot read: {exc}") from None
    if filename is None and isinstance(source, (str, os.PathLike)) and "\n" not in str(source) \
            and str(source).endswith(".prototxt"):
        raise CaeError(f"{source}: no such file")
    return str(source), filename or "<text>"


def parse_text(source, message_type, filename=None):
    """Parse ``source`` (a path or the text itself) strictly as ``message_type``."""
    text, filename = _read(source, filename)
    message = message_type()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        line, col = exc.GetLine(), exc.GetColumn()
        detail = str(exc)
        match = _POSITION.match(detail)
        if match:
            line, col = int(match.group(1)), int(match.group(2))
            detail = detail[match.end():]
        raise CaeError(f"{filename}:{line or 1}:{col or 1}: {detail}") from None
    return message


def parse_net(source, filename=None):
    """A NetParameter from a path or text, in either syntax."""
    return parse_text(source, pb.NetParameter, filename)


def parse_solver(source, filename=None):
    """A SolverParameter from a path or text."""
    return parse_text(source, pb.SolverParameter, filename)


def syntax_of(net):
    """``legacy`` when the net uses V1 ``layers {}``, else ``modern``."""
    if len(net.layers) and len(net.layer):
        raise CaeError("net mixes legacy `layers {}` and modern `layer {}` records")
    return "legacy" if len(net.layers) else "modern"


def to_text(message):
    """Text format as Caffe writes it."""
    return text_format.MessageToString(message)
