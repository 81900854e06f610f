"""The export's int8 quantisation (scripts/export_model.py `quantise_int8`) on a graph with a
planted outlier channel, against plain dynamic quantisation of the same graph.

    python tests/export/int8_outliers.py MODEL_ONNX OUT_INT8

Plants the outlier as real encoders carry them: one channel of the first LayerNormalization
feeding a weight MatMul scaled 40x (its gamma and beta), so that channel's activations stand
far above the others. Writes the planted graph's int8 export to OUT_INT8 and prints, as JSON:
the channel planted and the channels split off on that input, the largest difference between
the split fp32 graph and the planted one (the split must be exact), the mean relative L2
error of the mean-pooled last hidden state of int8 with and without the split, and what the
export does with the fixture as it is (no outlier: quantised whole, byte for byte as plain).
"""
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import quantize_dynamic

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from export_model import (int8_args, pooled_outputs, quantise_int8, relative_error,  # noqa: E402
                          split_outlier_channels)

PLANTED_CHANNEL, PLANT = 3, 40.0

src, out_int8 = Path(sys.argv[1]), Path(sys.argv[2])
model = onnx.load(str(src))
inits = {i.name: i for i in model.graph.initializer}
weight_inputs = {n.input[0] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits}
norm = next(n for n in model.graph.node if n.op_type == "LayerNormalization" and n.output[0] in weight_inputs)
for name in norm.input[1:3]:
    values = numpy_helper.to_array(inits[name]).copy()
    values[PLANTED_CHANNEL] *= PLANT
    inits[name].CopyFrom(numpy_helper.from_array(values, name))

rng = np.random.default_rng(0)
names = [i.name for i in model.graph.input]


def feed(length):
    ids = rng.integers(5, 100, size=(1, length), dtype=np.int64)  # the fixture knows 174 tokens
    f = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {k: v for k, v in f.items() if k in names}


calibration = [feed(int(n)) for n in rng.integers(4, 24, size=40)]
checks = [feed(int(n)) for n in rng.integers(4, 24, size=20)]

with tempfile.TemporaryDirectory() as tmp:
    planted = Path(tmp) / "planted.onnx"
    onnx.save(model, str(planted))
    split = onnx.load(str(planted))
    split_outlier_channels(split, calibration)
    split_path = Path(tmp) / "split.onnx"
    onnx.save(split, str(split_path))
    idx = next(i for i in split.graph.initializer if i.name == norm.output[0] + "/outlier_channels")
    plain = Path(tmp) / "plain.int8.onnx"
    quantize_dynamic(str(planted), str(plain), **int8_args())
    summary = quantise_int8(planted, out_int8, calibration)

    reference = pooled_outputs(planted, checks)

    def error(path):
        return relative_error(reference, pooled_outputs(path, checks))

    split_diff = max(float(np.abs(g - r).max()) for g, r in zip(pooled_outputs(split_path, checks), reference))

    as_is = {name: Path(tmp) / f"as_is.{name}.onnx" for name in ("export", "plain")}
    as_is_summary = quantise_int8(src, as_is["export"], calibration)
    quantize_dynamic(str(src), str(as_is["plain"]), **int8_args())
    same = as_is["export"].read_bytes() == as_is["plain"].read_bytes()
    print(json.dumps({
        "planted_channel": PLANTED_CHANNEL,
        "split_channels": numpy_helper.to_array(idx).tolist(),
        "split_fp32_max_abs_diff": split_diff,
        "int8_plain_error": error(plain),
        "int8_split_error": error(out_int8),
        "summary": summary,
        "unplanted": {"summary": as_is_summary, "same_as_plain": same},
    }))
