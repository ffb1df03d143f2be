"""Strict parsing of every generated file against the project's schema."""
import glob
import os
import struct

import pytest

from caffe_cae import schema
from caffe_cae.errors import CaeError
from caffe_cae.proto import caffe_cae_pb2 as pb
from conftest import REPO

GENERATED = sorted(glob.glob(os.path.join(REPO, "generated", "*", "*.prototxt")))


def test_grid_is_complete():
    # 7 nets x 3 code sizes x 3 files x 2 syntaxes
    assert len(GENERATED) == 126


@pytest.mark.parametrize("path", GENERATED, ids=lambda p: os.path.relpath(p, REPO))
def test_generated_file_parses_strictly(path):
    if path.endswith("_solver.prototxt"):
        solver = schema.parse_solver(path)
        assert solver.base_lr == pytest.approx(0.006)
        assert os.path.exists(os.path.join(REPO, solver.net))
    else:
        net = schema.parse_net(path)
        expected = "legacy" if os.sep + "legacy" + os.sep in path else "modern"
        assert schema.syntax_of(net) == expected


def test_unknown_field_is_an_error_with_position():
    text = 'name: "x"\nlayer {\n  name: "a"\n  colour: 3\n}\n'
    with pytest.raises(CaeError) as info:
        schema.parse_net(text, filename="bad.prototxt")
    message = str(info.value)
    assert message.startswith("bad.prototxt:4:")
    assert "colour" in message


def test_unpooling_field_numbers():
    layer = pb.LayerParameter.DESCRIPTOR.fields_by_name["unpooling_param"]
    v1 = pb.V1LayerParameter.DESCRIPTOR.fields_by_name["unpooling_param"]
    assert (layer.number, v1.number) == (150, 44)
    assert pb.V1LayerParameter.LayerType.Value("UNPOOLING") == 42
    numbers = {f.name: f.number for f in pb.UnpoolingParameter.DESCRIPTOR.fields}
    assert numbers == {"unpool": 1, "kernel_size": 2, "stride": 3, "pad": 4, "kernel_h": 5, "kernel_w": 6,
                       "stride_h": 7, "stride_w": 8, "pad_h": 9, "pad_w": 10, "engine": 11,
                       "unpool_size": 12, "unpool_h": 13, "unpool_w": 14}
    assert dict(pb.UnpoolingParameter.UnpoolMethod.items()) == {"MAX": 0, "AVE": 1, "TILE": 2}


def test_generated_module_matches_proto_file():
    """The committed _pb2 module was generated from the committed .proto (make schema)."""
    from google.protobuf import descriptor_pb2
    proto = os.path.join(REPO, "caffe_cae", "proto", "caffe_cae.proto")
    with open(proto) as handle:
        text = handle.read()
    compiled = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(compiled)
    for message in compiled.message_type:
        assert f"message {message.name} {{" in text
        for field in message.field:
            assert f" {field.name} = {field.number}" in text, (message.name, field.name)


# The legacy syntax against the schema of the Caffe the paper ran (HyeonwooNoh/caffe, June 2015).
from caffe_cae import render  # noqa: E402
from caffe_cae.proto import noh2015_pb2 as noh  # noqa: E402

LEGACY = sorted(glob.glob(os.path.join(REPO, "generated", "legacy", "*.prototxt")))


def test_legacy_grid_is_complete():
    assert len(LEGACY) == 63


@pytest.mark.parametrize("path", LEGACY, ids=lambda p: os.path.relpath(p, REPO))
def test_legacy_file_parses_against_the_fork(path):
    if path.endswith("_solver.prototxt"):
        fork, ours = schema.parse_legacy_solver(path), schema.parse_solver(path)
        assert isinstance(fork, noh.SolverParameter) and fork.HasField("solver_type")
    else:
        fork, ours = schema.parse_legacy(path), schema.parse_net(path)
        assert isinstance(fork, noh.NetParameter) and len(fork.layers) == len(ours.layers) > 0
    # Both schemas read the file alike (same fields, same numbers).
    assert schema.to_text(fork) == schema.to_text(ours)


def _with_line_after(text, anchor, line):
    """``text`` with ``line`` inserted after the first line containing ``anchor``; its line number."""
    lines = text.split("\n")
    at = next(i for i, l in enumerate(lines) if anchor in l) + 1
    lines.insert(at, line)
    return "\n".join(lines), at + 1


def test_legacy_field_the_fork_lacks_is_an_error_with_position():
    text = render.render_files("siamese", 2, "legacy")["train_test"]
    bad, line = _with_line_after(text, "slice_param {", "    axis: 1")
    schema.parse_net(text, filename="good.prototxt")
    with pytest.raises(CaeError) as info:
        schema.parse_net(bad, filename="bad.prototxt")
    message = str(info.value)
    assert message.startswith(f"bad.prototxt:{line}:5: ") and "\n" not in message
    assert '"noh2015.SliceParameter" has no field named "axis"' in message
    # The project's schema alone takes it: only the fork's check catches it.
    schema.parse_text(bad, pb.NetParameter)
    with pytest.raises(CaeError, match=r"^bad\.prototxt:\d+:\d+: .*input_shape"):
        schema.parse_net('name: "x"\ninput: "data"\ninput_shape { dim: 1 }\n'
                         'layers { name: "t" type: TANH bottom: "data" top: "t" }\n', filename="bad.prototxt")


def test_legacy_net_with_a_modern_record_names_it():
    text = 'name: "x"\nlayers { name: "a" type: TANH bottom: "d" top: "a" }\nlayer { name: "b" type: "TanH" }\n'
    with pytest.raises(CaeError, match=r'^mixed\.prototxt:3:1: .*no field named "layer"'):
        schema.parse_net(text, filename="mixed.prototxt")


def test_expected_syntax():
    legacy = os.path.join(REPO, "generated", "legacy", "model1_d2_deploy.prototxt")
    with pytest.raises(CaeError, match=r"model1_d2_deploy\.prototxt:\d+:1: a legacy V1 `layers \{\}` record"):
        schema.parse_net(legacy, syntax="modern")
    assert schema.syntax_of(schema.parse_net(legacy, syntax="legacy")) == "legacy"
    modern = os.path.join(REPO, "generated", "modern", "model1_d2_deploy.prototxt")
    with pytest.raises(CaeError, match=r'model1_d2_deploy\.prototxt:\d+:\d+: .*no field named "layer"'):
        schema.parse_net(modern, syntax="legacy")
    with pytest.raises(CaeError, match="syntax: expected legacy or modern"):
        schema.parse_net(modern, syntax="v2")


def test_legacy_solver_field_the_fork_lacks_is_an_error():
    text = render.render_files("model1", 2, "legacy")["solver"]
    schema.parse_solver(text, filename="good_solver.prototxt")
    bad, line = _with_line_after(text, "solver_type:", "clip_gradients: 10")
    with pytest.raises(CaeError) as info:
        schema.parse_solver(bad, filename="bad_solver.prototxt")
    assert str(info.value).startswith(f"bad_solver.prototxt:{line}:1: ")
    assert '"noh2015.SolverParameter" has no field named "clip_gradients"' in str(info.value)
    # A modern solver (type: "SGD") is not held to the fork.
    modern = render.render_files("model1", 2, "modern")["solver"]
    schema.parse_solver(modern + "clip_gradients: 10\n")
    with pytest.raises(CaeError, match=r'^<text>:\d+:1: .*"noh2015.SolverParameter" has no field named "type"'):
        schema.parse_solver(modern, syntax="legacy")


def test_fork_schema_numbers():
    """A spot check of noh2015.proto against the fork's caffe.proto (HyeonwooNoh/caffe, d9e8494)."""
    layer_type = noh.LayerParameter.LayerType
    assert (layer_type.Value("UNPOOLING"), layer_type.Value("BN"), layer_type.Value("CROP"),
            layer_type.Value("DROPOUT_CHANNEL"), layer_type.Value("SLICE")) == (42, 43, 40, 53, 33)
    assert len(layer_type.keys()) == 54

    def numbers(message):
        return {f.name: f.number for f in message.DESCRIPTOR.fields}
    layer = numbers(noh.LayerParameter)
    assert (layer["unpooling_param"], layer["slice_param"], layer["bn_param"], layer["transform_param"],
            layer["loss_param"], layer["layer"], layer["param"]) == (44, 31, 45, 36, 42, 1, 1001)
    assert numbers(noh.NetParameter) == {"name": 1, "layers": 2, "input": 3, "input_dim": 4,
                                         "force_backward": 5, "state": 6}
    assert numbers(noh.SliceParameter) == {"slice_dim": 1, "slice_point": 2}
    solver = numbers(noh.SolverParameter)
    assert (solver["iter_size"], solver["solver_type"], solver["random_seed"]) == (35, 30, 20)
    assert "type" not in solver and "clip_gradients" not in solver
    assert dict(noh.SolverParameter.SolverType.items()) == {"SGD": 0, "NESTEROV": 1, "ADAGRAD": 2}
    unpool = numbers(noh.UnpoolingParameter)
    assert (unpool["unpool"], unpool["engine"], unpool["unpool_size"], unpool["unpool_w"]) == (1, 11, 12, 14)
    assert dict(noh.UnpoolingParameter.Engine.items()) == {"DEFAULT": 0, "CAFFE": 1}
    assert noh.LossParameter.DESCRIPTOR.fields_by_name["normalize"].default_value is True


def test_fork_module_matches_proto_file():
    """The committed noh2015_pb2 was generated from the committed noh2015.proto (make schema)."""
    from google.protobuf import descriptor_pb2
    with open(os.path.join(REPO, "caffe_cae", "proto", "noh2015.proto")) as handle:
        text = handle.read()
    compiled = descriptor_pb2.FileDescriptorProto()
    noh.DESCRIPTOR.CopyToProto(compiled)
    assert compiled.package == "noh2015"
    for message in compiled.message_type:
        assert f"message {message.name} {{" in text
        for field in message.field:
            assert f" {field.name} = {field.number}" in text, (message.name, field.name)


# ----------------------------------------------------------------------------- the whole Caffe schema

def _facts(file_proto):
    """{path: facts} of every message, field and enum value of a FileDescriptorProto."""
    facts = {}

    def enums(owner, prefix):
        for enum in owner.enum_type:
            for value in enum.value:
                facts["%s%s.%s" % (prefix, enum.name, value.name)] = value.number

    def message(msg, prefix):
        name = prefix + msg.name
        facts[name] = "message"
        for f in msg.field:
            default = f.default_value
            if f.type == f.TYPE_FLOAT and default:  # protoc versions print float defaults apart
                default = struct.unpack("f", struct.pack("f", float(default)))[0]
            facts["%s.%s" % (name, f.name)] = (f.number, f.label, f.type, f.type_name.rsplit(".", 1)[-1],
                                                default, f.options.packed)
        enums(msg, name + ".")
        for nested in msg.nested_type:
            message(nested, name + ".")

    for msg in file_proto.message_type:
        message(msg, "")
    enums(file_proto, "")
    return facts


def test_schema_covers_the_engines_caffe_proto(tmp_path):
    """Every message, field (number, label, type, default, packing) and enum value of the
    engine's caffe.proto (BVLC 1.0 + the Unpooling patch) is in caffe_cae.proto, the same."""
    from google.protobuf import descriptor_pb2

    from engine_support import require_engine
    eng = require_engine()
    out = tmp_path / "caffe.pb"
    proc = eng.run([eng.python, "-c", "from caffe.proto import caffe_pb2; "
                    "open(%r, 'wb').write(caffe_pb2.DESCRIPTOR.serialized_pb)" % str(out)], cwd=str(tmp_path))
    assert proc.returncode == 0 and out.exists()
    theirs = descriptor_pb2.FileDescriptorProto.FromString(out.read_bytes())
    ours = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(ours)
    caffe, mine = _facts(theirs), _facts(ours)
    assert len(caffe) > 600 and caffe["V1LayerParameter.layer"][0] == 1
    assert {k: v for k, v in caffe.items() if mine.get(k) != v} == {}
    # Beyond Caffe: only Noh's batch normalization.
    assert sorted(k for k in mine if k not in caffe) == [
        "BNParameter", "BNParameter.BNMode.INFERENCE", "BNParameter.BNMode.LEARN", "BNParameter.bn_mode",
        "BNParameter.scale_filler", "BNParameter.shift_filler", "V1LayerParameter.LayerType.BN",
        "V1LayerParameter.bn_param"]
