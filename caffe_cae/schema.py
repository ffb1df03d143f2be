"""Strict parsing of Caffe text files against the project's schema and, for the legacy
syntax, against the schema of the Caffe the paper ran.

Two schemas:

* ``caffe_cae.proto`` (:mod:`caffe_cae.proto.caffe_cae_pb2`, ``pb``): the project's own,
  both syntaxes in one NetParameter (legacy V1 layers in ``net.layers``, modern ones in
  ``net.layer``). Every caller (inspect, upgrade, render, the backends) works on its
  messages.
* ``noh2015.proto`` (:mod:`caffe_cae.proto.noh2015_pb2`, ``noh``): the message set of
  HyeonwooNoh/caffe, the June 2015 fork the paper ran, which reads only the legacy syntax.
  Our V1 record reuses the modern sub-messages, so it accepts fields the fork lacks (a
  Slice ``axis``, ``input_shape``, solver ``type``, ...); the fork's schema does not.

``parse_net`` and ``parse_solver`` accept a path or text and always return the project's
message. A legacy file is parsed twice from the same text: against the project's schema
(the message returned) and strictly against the fork's (a check; that message is dropped),
so a legacy file that parses here loads in the fork, wherever it is parsed: rendering
(``render`` checks each text it writes), ``inspect``, ``upgrade``, the backends, the tests.
Which files are legacy is decided by parsing, not by pattern matching on the text:

* a net is legacy when it has a V1 ``layers {}`` record (a net mixing both records is
  legacy too, and the fork's check names the first ``layer {}`` it cannot read);
* a solver is legacy when it names its method by the enum ``solver_type`` (the fork's only
  way; BVLC 1.0 spells it ``type: "SGD"``), which is how the legacy solver template writes it.

``syntax="legacy"`` or ``"modern"`` says which syntax the caller expects instead: a legacy
check is then made (or skipped) whatever the text holds, and a net that is not in the
expected syntax is an error. ``parse_legacy`` / ``parse_legacy_solver`` return the fork's
messages themselves. Any unknown field or malformed value raises CaeError with one line
``FILE:LINE:COL: message``.
"""
import os
import re

from google.protobuf import text_format

from .errors import CaeError
from .proto import caffe_cae_pb2 as pb
from .proto import noh2015_pb2 as noh

NetParameter = pb.NetParameter
SolverParameter = pb.SolverParameter

#: What names the fork's schema in an error from its check.
FORK = "legacy syntax: the June 2015 fork's schema, noh2015.proto"

SYNTAXES = ("legacy", "modern")

_POSITION = re.compile(r"^(\d+):(\d+)\s*:\s*")
_V1_RECORD = re.compile(r"(^|[\s{}])layers\s*\{", re.M)


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


def _parse(text, message_type, filename, note=None):
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
        if note:
            detail = f"{detail} ({note})"
        raise CaeError(f"{filename}:{line or 1}:{col or 1}: {detail}") from None
    return message


def _check_syntax(syntax):
    if syntax is not None and syntax not in SYNTAXES:
        raise CaeError(f"syntax: expected legacy or modern, not {syntax!r}")


def parse_text(source, message_type, filename=None):
    """Parse ``source`` (a path or the text itself) strictly as ``message_type``."""
    text, filename = _read(source, filename)
    return _parse(text, message_type, filename)


def parse_legacy(source, filename=None):
    """The fork's NetParameter (:mod:`noh2015_pb2`) from a legacy net's path or text."""
    text, filename = _read(source, filename)
    return _parse(text, noh.NetParameter, filename, FORK)


def parse_legacy_solver(source, filename=None):
    """The fork's SolverParameter (:mod:`noh2015_pb2`) from a legacy solver's path or text."""
    text, filename = _read(source, filename)
    return _parse(text, noh.SolverParameter, filename, FORK)


def _position(text, pattern):
    match = pattern.search(text)
    if not match:
        return 1, 1
    start = match.start() + len(match.group(1))
    line = text.count("\n", 0, start) + 1
    return line, start - (text.rfind("\n", 0, start) + 1) + 1


def parse_net(source, filename=None, syntax=None):
    """A NetParameter (the project's message) from a path or text, in either syntax.

    A legacy net (one with V1 ``layers {}``, or any net when ``syntax="legacy"``) must
    also parse strictly against the fork's schema; ``syntax="modern"`` refuses V1 records.
    """
    _check_syntax(syntax)
    text, filename = _read(source, filename)
    net = _parse(text, pb.NetParameter, filename)
    legacy = len(net.layers) > 0
    if syntax == "modern" and legacy:
        line, col = _position(text, _V1_RECORD)
        raise CaeError(f"{filename}:{line}:{col}: a legacy V1 `layers {{}}` record in a net expected "
                       "in modern syntax (`layer {}`)")
    if syntax == "legacy" or legacy:
        _parse(text, noh.NetParameter, filename, FORK)
    return net


def parse_solver(source, filename=None, syntax=None):
    """A SolverParameter (the project's message) from a path or text.

    A legacy solver (one that sets ``solver_type``, or any solver when ``syntax="legacy"``)
    must also parse strictly against the fork's schema; ``syntax="modern"`` skips that check.
    """
    _check_syntax(syntax)
    text, filename = _read(source, filename)
    solver = _parse(text, pb.SolverParameter, filename)
    if syntax == "legacy" or (syntax is None and solver.HasField("solver_type")):
        _parse(text, noh.SolverParameter, filename, FORK)
    return solver


def syntax_of(net):
    """``legacy`` when the net uses V1 ``layers {}``, else ``modern``."""
    if len(net.layers) and len(net.layer):
        raise CaeError("net mixes legacy `layers {}` and modern `layer {}` records")
    return "legacy" if len(net.layers) else "modern"


def to_text(message):
    """Text format as Caffe writes it."""
    return text_format.MessageToString(message)
