"""Strict parsing of every generated file against the project's schema."""
import glob
import os

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
