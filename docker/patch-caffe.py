#!/usr/bin/env python3
"""Teach a BVLC Caffe 1.0 source tree the Unpooling layer of caffe-cae.

Usage: patch-caffe.py CAFFE_SRC SCHEMA_PROTO UNPOOLING_DIR

- caffe.proto gets the UnpoolingParameter message, LayerParameter.unpooling_param,
  V1LayerParameter.unpooling_param and the V1 enum value UNPOOLING, all copied from the
  project's schema SCHEMA_PROTO (caffe_cae/proto/caffe_cae.proto), where the numbers live;
- upgrade_proto.cpp maps V1 UNPOOLING to the type "Unpooling" and copies unpooling_param;
- the layer (unpooling_layer.hpp/.cpp/.cu) and its gtest are copied into the tree.

Runs with the Python 3 standard library only (inside a bare build image). Idempotent:
a tree already patched is left as it is. Exits non-zero with one line on any mismatch.
"""
import os
import re
import shutil
import sys

MARK = "caffe-cae"


def die(message):
    sys.exit("patch-caffe: " + message)


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError as exc:
        die("cannot read %s: %s" % (path, exc.strerror))


def write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def message_block(text, name, path):
    """Return (start, end) of `message NAME { ... }` in text (end is after the brace)."""
    m = re.search(r"^message\s+%s\s*\{" % re.escape(name), text, re.M)
    if not m:
        die("%s: no message %s" % (path, name))
    depth = 0
    for i in range(m.end() - 1, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return m.start(), i + 1
    die("%s: message %s has no closing brace" % (path, name))


def schema_facts(schema_path):
    """Read the Unpooling definitions out of the project's schema."""
    text = read(schema_path)
    start, end = message_block(text, "UnpoolingParameter", schema_path)
    unpool_message = text[start:end]
    facts = {"message": unpool_message}
    for msg, key in (("LayerParameter", "modern"), ("V1LayerParameter", "v1")):
        s, e = message_block(text, msg, schema_path)
        m = re.search(r"optional\s+UnpoolingParameter\s+unpooling_param\s*=\s*(\d+)\s*;", text[s:e])
        if not m:
            die("%s: %s has no `optional UnpoolingParameter unpooling_param = N;`" % (schema_path, msg))
        facts[key] = int(m.group(1))
    s, e = message_block(text, "V1LayerParameter", schema_path)
    m = re.search(r"\bUNPOOLING\s*=\s*(\d+)\s*;", text[s:e])
    if not m:
        die("%s: V1LayerParameter.LayerType has no UNPOOLING value" % schema_path)
    facts["v1_enum"] = int(m.group(1))
    return facts


def insert_before_close(text, name, line, path):
    """Insert `line` just before the closing brace of message NAME."""
    start, end = message_block(text, name, path)
    return text[:end - 1] + line + "\n" + text[end - 1:]


def patch_proto(path, facts):
    text = read(path)
    if "message UnpoolingParameter" in text:
        return False
    for msg, key in (("LayerParameter", "modern"), ("V1LayerParameter", "v1")):
        s, e = message_block(text, msg, path)
        if re.search(r"=\s*%d\s*[;\[]" % facts[key], text[s:e]):
            die("%s: field number %d is already used in %s" % (path, facts[key], msg))
    s, e = message_block(text, "V1LayerParameter", path)
    enum_close = re.search(r"\n(\s*)THRESHOLD = 31;\n", text[s:e])
    if not enum_close:
        die("%s: V1LayerParameter.LayerType does not end with THRESHOLD = 31" % path)
    if re.search(r"=\s*%d;" % facts["v1_enum"], text[s:s + enum_close.end()].split("enum LayerType")[1]):
        die("%s: V1 enum value %d is already used" % (path, facts["v1_enum"]))
    pos = s + enum_close.end()
    text = text[:pos] + "%sUNPOOLING = %d;  // %s\n" % (enum_close.group(1), facts["v1_enum"], MARK) + text[pos:]
    text = insert_before_close(text, "V1LayerParameter",
                               "  optional UnpoolingParameter unpooling_param = %d;  // %s" % (facts["v1"], MARK), path)
    text = insert_before_close(text, "LayerParameter",
                               "  optional UnpoolingParameter unpooling_param = %d;  // %s" % (facts["modern"], MARK),
                               path)
    text = text.rstrip("\n") + "\n\n// Added by %s (from caffe_cae/proto/caffe_cae.proto).\n%s\n" % (MARK, facts["message"])
    write(path, text)
    return True


def patch_upgrade(path):
    text = read(path)
    if "V1LayerParameter_LayerType_UNPOOLING" in text:
        return False
    anchor = "  if (v1_layer_param.has_transform_param()) {\n"
    case = "  case V1LayerParameter_LayerType_THRESHOLD:\n    return \"Threshold\";\n"
    if text.count(anchor) != 1 or text.count(case) != 1:
        die("%s: does not look like BVLC Caffe 1.0's upgrade_proto.cpp" % path)
    copy = ("  if (v1_layer_param.has_unpooling_param()) {  // %s\n"
            "    layer_param->mutable_unpooling_param()->CopyFrom(\n"
            "        v1_layer_param.unpooling_param());\n"
            "  }\n") % MARK
    text = text.replace(anchor, copy + anchor)
    text = text.replace(case, case + "  case V1LayerParameter_LayerType_UNPOOLING:  // %s\n"
                                      "    return \"Unpooling\";\n" % MARK)
    write(path, text)
    return True


def main(argv):
    if len(argv) != 4:
        die("usage: patch-caffe.py CAFFE_SRC SCHEMA_PROTO UNPOOLING_DIR")
    src, schema, layer_dir = argv[1:]
    facts = schema_facts(schema)
    proto = os.path.join(src, "src/caffe/proto/caffe.proto")
    upgrade = os.path.join(src, "src/caffe/util/upgrade_proto.cpp")
    changed = patch_proto(proto, facts)
    changed = patch_upgrade(upgrade) or changed
    copies = (("unpooling_layer.hpp", "include/caffe/layers"), ("unpooling_layer.cpp", "src/caffe/layers"),
              ("unpooling_layer.cu", "src/caffe/layers"), ("test_unpooling_layer.cpp", "src/caffe/test"))
    for name, dest in copies:
        source = os.path.join(layer_dir, name)
        if not os.path.isfile(source):
            die("missing %s" % source)
        if not os.path.isdir(os.path.join(src, dest)):
            die("%s: no %s (not a Caffe source tree?)" % (src, dest))
        shutil.copyfile(source, os.path.join(src, dest, name))
    print("patch-caffe: %s (LayerParameter.unpooling_param = %d, V1 field %d, V1 UNPOOLING = %d)"
          % ("patched" if changed else "already patched", facts["modern"], facts["v1"], facts["v1_enum"]))


if __name__ == "__main__":
    main(sys.argv)
