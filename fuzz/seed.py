#!/usr/bin/env python3
"""Writes the checked-in seed corpora of rtserve's fuzz targets (fuzz/seeds/<target>/).

The seeds are what the tests send and read, encoded the way real clients and tools encode them:
HTTP bodies and gRPC messages built by tritonclient for the example models (the requests of the
e2e tests: JSON and binary data, BYTES, FP16, classification, the malformed bodies of the error
tests), the repository's config files, small images of each format and colour type Pillow
writes, small ONNX graphs built with the onnx package (plus the example models, which
scripts/fuzz.sh adds from examples/ at run time rather than copying them here), and for TFLite
the smallest example file and cuts of the others (the example .tflite files are added the same
way).

Deterministic: rerunning it rewrites the same bytes. Needs numpy, Pillow, onnx and tritonclient
(tests/python/requirements.txt). Run from anywhere: python3 fuzz/seed.py
"""

import io
import json
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
import tritonclient.grpc as grpcclient
import tritonclient.grpc._utils as grpc_utils
import tritonclient.http as httpclient

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "seeds"
NO_HEADER_LENGTH = 0xFFFFFFFF


def write(target: str, name: str, data: bytes) -> None:
    folder = SEEDS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def tensors(module, rng):
    """(name, inputs, outputs) request cases for the example models, built with `module`'s
    InferInput / InferRequestedOutput (tritonclient.http or tritonclient.grpc)."""

    def inp(name, array, datatype):
        tensor = module.InferInput(name, list(array.shape), datatype)
        return tensor, array

    cases = [
        ("mlp", [inp("input", rng.standard_normal((2, 784)).astype(np.float32), "FP32")], ["output"]),
        ("cnn", [inp("input", rng.standard_normal((1, 1, 28, 28)).astype(np.float32), "FP32")], ["logits"]),
        ("dynamic_seq", [inp("tokens", rng.standard_normal((1, 3, 8)).astype(np.float32), "FP32")], []),
        (
            "two_io",
            [
                inp("a", np.arange(4, dtype=np.float32).reshape(1, 4), "FP32"),
                inp("b", np.ones((1, 4), dtype=np.float32), "FP32"),
            ],
            ["sum", "product"],
        ),
        (
            "int_bool",
            [
                inp("ints", np.array([1, -2, 3], dtype=np.int64), "INT64"),
                inp("flags", np.array([True, False, True]), "BOOL"),
            ],
            ["count"],
        ),
        (
            "strings",
            [
                inp("text", np.array([[b"hello"], [b"caf\xc3\xa9"]], dtype=np.object_), "BYTES"),
                inp("half", np.array([[0.5, -1.0], [2.0, 65504.0]], dtype=np.float16), "FP16"),
            ],
            ["scores"],
        ),
    ]
    return cases


def http_seeds(rng) -> None:
    count = 0
    for model, inputs, outputs in tensors(httpclient, rng):
        for binary in (False, True):
            ins = []
            for tensor, array in inputs:
                tensor.set_data_from_numpy(array, binary_data=binary)
                ins.append(tensor)
            outs = []
            for i, name in enumerate(outputs):
                # The classification extension on the first FP32 output, as the e2e tests ask.
                class_count = 2 if (i == 0 and model in ("mlp", "strings")) else 0
                outs.append(httpclient.InferRequestedOutput(name, binary_data=binary, class_count=class_count))
            body, json_size = httpclient.InferenceServerClient.generate_request_body(
                ins, outputs=outs or None, request_id=f"{model}-{int(binary)}", priority=1, timeout=100000
            )
            length = NO_HEADER_LENGTH if json_size is None else json_size
            write("http_infer", f"{model}_{'binary' if binary else 'json'}", struct.pack("<I", length) + body)
            count += 1
    # The request bodies of the decoder's own tests and the e2e error tests: each is refused.
    refused = [
        '{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3.5,4]]}]}',
        '{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1,"a"]}]}',
        '{"inputs":[{"name":"x","shape":[3],"datatype":"FP32","data":[1,2]}]}',
        '{"inputs":[{"name":"x","shape":[1],"datatype":"FLOAT","data":[1]}]}',
        '{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}',
        '{"inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":[300]}]}',
        '{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}',
        '{"inputs": [',
        '{"inputs":[{"name":"text","shape":[1,1],"datatype":"BYTES","data":["a"]}],'
        '"outputs":[{"name":"scores","parameters":{"classification":-1,"softmax":1}}],'
        '"parameters":{"binary_data_output":"yes"}}',
    ]
    for i, body in enumerate(refused):
        write("http_infer", f"refused_{i}", struct.pack("<I", NO_HEADER_LENGTH) + body.encode())
    header = b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}'
    write("http_infer", "refused_trailing", struct.pack("<I", len(header)) + header + bytes(6))
    write("http_infer", "refused_header_length", struct.pack("<I", 10) + b"{}")
    header = b'{"inputs":[{"name":"t","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":9}}]}'
    write("http_infer", "bytes_truncated", struct.pack("<I", len(header)) + header + b"\x05\0\0\0ab\x01\0\0")
    print(f"http_infer: {count} client bodies, {len(refused) + 3} refused ones")


def grpc_seeds(rng) -> None:
    count = 0
    for model, inputs, outputs in tensors(grpcclient, rng):
        ins = []
        for tensor, array in inputs:
            tensor.set_data_from_numpy(array)
            ins.append(tensor)
        outs = [
            grpcclient.InferRequestedOutput(name, class_count=2 if (i == 0 and model == "mlp") else 0)
            for i, name in enumerate(outputs)
        ]
        request = grpc_utils._get_inference_request(
            model_name=model,
            inputs=ins,
            model_version="1",
            request_id=f"{model}-raw",
            outputs=outs or None,
            sequence_id=0,
            sequence_start=False,
            sequence_end=False,
            priority=1,
            timeout=100000,
            parameters=None,
        )
        write("grpc_infer", f"{model}_raw", request.SerializeToString())
        count += 1
        # The same inputs as typed contents (the e2e tests' Contents::Typed).
        typed = grpc_utils.service_pb2.ModelInferRequest()
        typed.CopyFrom(request)
        del typed.raw_input_contents[:]
        for message, (_, array) in zip(typed.inputs, inputs):
            contents = message.contents
            flat = array.reshape(-1)
            if array.dtype == np.float32 or array.dtype == np.float16:
                contents.fp32_contents.extend(flat.astype(np.float32).tolist())
            elif array.dtype == np.int64:
                contents.int64_contents.extend(flat.tolist())
            elif array.dtype == np.bool_:
                contents.bool_contents.extend(flat.tolist())
            else:
                contents.bytes_contents.extend(flat.tolist())
        write("grpc_infer", f"{model}_typed", typed.SerializeToString())
        count += 1
    refused = grpc_utils.service_pb2.ModelInferRequest(model_name="mlp")
    refused.inputs.add(name="x", datatype="INT8", shape=[1]).contents.int_contents.append(200)
    write("grpc_infer", "refused_out_of_range", refused.SerializeToString())
    refused = grpc_utils.service_pb2.ModelInferRequest(model_name="two_io")
    refused.inputs.add(name="a", datatype="FP32", shape=[1, 4])
    refused.inputs.add(name="b", datatype="FP32", shape=[1, 4])
    refused.raw_input_contents.append(bytes(16))
    write("grpc_infer", "refused_raw_count", refused.SerializeToString())
    print(f"grpc_infer: {count} client messages, 2 refused ones")


def config_seeds() -> None:
    """The repository's config files, named for the directory the target reads them in (`model`)."""
    files = sorted((ROOT / "examples" / "model_repository").glob("*/config.*"))
    files += sorted((ROOT / "crates" / "fuzz-targets" / "configs").glob("*"))
    rich_pbtxt = """
name: "model"
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ -1, 3 ] } ]
output { name: "y" data_type: TYPE_FP32 dims: [ 3 ] }
instance_group [ { count: 2 kind: KIND_CPU }, { name: "g" count: 1 kind: KIND_GPU gpus: [ 0 ] } ]
dynamic_batching {
  preferred_batch_size: [ 2, 4 ]
  max_queue_delay_microseconds: 100
  priority_levels: 2
  default_priority_level: 1
  default_queue_policy { timeout_action: REJECT default_timeout_microseconds: 5000
    allow_timeout_override: true max_queue_size: 16 }
}
response_cache { enable: true }
version_policy: { specific: { versions: [ 1, 3 ] } }
default_model_filename: "model.onnx"
parameters { key: "slo" value: { string_value: "voice" } }
parameters { key: "intra_op_threads" value: { string_value: "2" } }
optimization { execution_accelerators { cpu_execution_accelerator : [ { name : "openvino" } ] } }
"""
    rich_toml = """
name = "model"
max_batch_size = 8
response_cache = { enable = true }
version_policy = { latest = { num_versions = 2 } }
[[input]]
name = "x"
data_type = "TYPE_FP32"
dims = [-1, 3]
[[output]]
name = "y"
data_type = "FP32"
dims = [3]
[[instance_group]]
count = 2
kind = "KIND_CPU"
[dynamic_batching]
preferred_batch_size = [2, 4]
max_queue_delay_microseconds = 100
[parameters]
slo_ms = 2.5
allow_spinning = true
"""
    count = 0
    for path in files:
        text = path.read_text()
        target = "config_toml" if path.suffix == ".toml" else "config_pbtxt"
        # The target reads every config as model directory `model`.
        text = re.sub(r'^name(\s*[:=]\s*)"[^"]*"', r'name\1"model"', text, flags=re.M)
        write(target, f"{path.parent.name if path.name.startswith('config.') else path.stem}", text.encode())
        count += 1
    write("config_pbtxt", "rich", rich_pbtxt.encode())
    write("config_toml", "rich", rich_toml.encode())
    print(f"config_pbtxt, config_toml: {count + 2} files")


def image_seeds() -> None:
    rng = np.random.default_rng(7)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), "RGB")
    cases = {
        "rgb.jpg": (rgb, "JPEG", {"quality": 80}),
        "progressive.jpg": (rgb, "JPEG", {"progressive": True}),
        "gray.jpg": (rgb.convert("L"), "JPEG", {}),
        "cmyk.jpg": (rgb.convert("CMYK"), "JPEG", {}),
        "subsampled.jpg": (rgb.resize((33, 7)), "JPEG", {"subsampling": 2}),
        "rgb.png": (rgb, "PNG", {}),
        "rgba.png": (rgb.convert("RGBA"), "PNG", {}),
        "gray.png": (rgb.convert("L"), "PNG", {}),
        "palette.png": (rgb.convert("P"), "PNG", {}),
        "interlaced.png": (rgb, "PNG", {"interlace": 1}),
        "gray16.png": (rgb.convert("I;16"), "PNG", {}),
        "one_pixel.png": (Image.new("RGB", (1, 1), (255, 127, 63)), "PNG", {}),
        "lossy.webp": (rgb, "WEBP", {"quality": 70}),
        "lossless.webp": (rgb.convert("RGBA"), "WEBP", {"lossless": True}),
    }
    for name, (image, fmt, options) in cases.items():
        out = io.BytesIO()
        image.save(out, fmt, **options)
        write("image_preprocess", name, out.getvalue())
    print(f"image_preprocess: {len(cases)} images")


def onnx_seeds() -> None:
    """Small graphs for each path of the onnx_model target; the example models are added by
    scripts/fuzz.sh."""
    rng = np.random.default_rng(11)

    def save(name, nodes, inputs, outputs, initializers, opset=13):
        graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        write("onnx_model", name, model.SerializeToString())

    def weight(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    # MatMul and Gemm (transB) with biases: dynamic quantization and FP16 conversion.
    save(
        "gemm",
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="matmul"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="gemm", transB=1),
        ],
        [x],
        [y],
        [weight("w1", 4, 5), weight("w2", 3, 5), weight("b2", 3)],
    )
    # Conv, BatchNormalization, MaxPool, Flatten: the trainer's view.
    image = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 6, 6])
    save(
        "conv",
        [
            helper.make_node("Conv", ["x", "k", "kb"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["n"], name="bn"),
            helper.make_node("Relu", ["n"], ["r"], name="relu"),
            helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
            helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
            helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], name="fc", transB=1),
        ],
        [image],
        [y],
        [
            weight("k", 2, 1, 3, 3),
            weight("kb", 2),
            weight("s", 2),
            weight("bb", 2),
            weight("m", 2),
            numpy_helper.from_array(np.ones(2, dtype=np.float32), "v"),
            weight("fc", 3, 18),
            weight("fcb", 3),
        ],
    )
    # A Constant node, an INT64 initializer (Reshape), a Cast: constants and integer tensors.
    save(
        "constants",
        [
            helper.make_node(
                "Constant", [], ["c"], name="const", value=numpy_helper.from_array(np.full((1, 4), 2, np.float32))
            ),
            helper.make_node("Mul", ["x", "c"], ["m"], name="mul"),
            helper.make_node("Reshape", ["m", "shape"], ["s"], name="reshape"),
            helper.make_node("Cast", ["s"], ["t"], name="cast", to=TensorProto.FLOAT),
            helper.make_node("MatMul", ["t", "w"], ["y"], name="matmul"),
        ],
        [x],
        [y],
        [numpy_helper.from_array(np.array([-1, 4], np.int64), "shape"), weight("w", 4, 3)],
    )
    # An If with subgraphs: refused by the FP16 conversion, with the node named.
    branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["z"])], "branch", [], [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)]
    )
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    save(
        "subgraph",
        [helper.make_node("If", ["cond"], ["y"], name="if", then_branch=branch, else_branch=branch)],
        [x, cond],
        [y],
        [],
    )
    print("onnx_model: 4 graphs")


def tflite_seeds() -> None:
    """The one-operator CUMSUM file whole, an INT8 CNN and the mobile block cut short (the
    flatbuffer's verifier and the rewrite's errors), and four bytes of nothing."""
    edge = ROOT / "examples" / "edge"
    write("tflite_model", "cumsum.tflite", (edge / "cumsum.tflite").read_bytes())
    write("tflite_model", "fashion_int8_cut", (edge / "fashion_cnn_int8.tflite").read_bytes()[:4096])
    write("tflite_model", "mobile_int8_cut", (edge / "mobile_block_int8.tflite").read_bytes()[:2048])
    write("tflite_model", "empty", b"\0\0\0\0")
    print("tflite_model: 4 files")


def main() -> None:
    if SEEDS.exists():
        shutil.rmtree(SEEDS)
    rng = np.random.default_rng(3)
    http_seeds(rng)
    grpc_seeds(rng)
    config_seeds()
    image_seeds()
    onnx_seeds()
    tflite_seeds()
    total = sum(f.stat().st_size for f in SEEDS.rglob("*") if f.is_file())
    print(f"{SEEDS.relative_to(ROOT)}: {total} bytes")


if __name__ == "__main__":
    main()
