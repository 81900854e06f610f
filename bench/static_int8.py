"""A statically quantised int8 graph (fixed, calibrated activation scales),
the candidate that would make `classify.model_file = "auto"` safe: with
dynamic quantisation a text's answer moves with its batch neighbours
(bench/batch_dependence.py); with fixed scales it cannot.

  python bench/static_int8.py MODEL_DIR [--method minmax|entropy] [--format qdq|qoperator] [--texts 256]

Writes MODEL_DIR/model.int8-static-METHOD[-qop].onnx: every MatMul's weights per
output channel (int8), its input quantised with a scale calibrated on the
first --texts Rotten Tomatoes train sentences (one at a time, unpadded; the
percentile method needs equal lengths and fails on them), embedding tables
fp32, as scripts/export_model.py's dynamic graph. Measure it with
`distilserve train --classify-model-file ...`, bench/batch_dependence.py and
bench/classify_graphs.py --graph.
"""
import argparse, json
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent


class Sentences(CalibrationDataReader):
    def __init__(self, model_dir: Path, count: int):
        tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        tok.no_padding()
        names = [i.name for i in onnx.load(str(model_dir / "model.onnx"), load_external_data=False).graph.input]
        texts = [json.loads(l)["text"] for l in open(ROOT / "data/rotten_tomatoes/train.jsonl")][:count]
        self.feeds = []
        for text in texts:
            e = tok.encode(text)
            ids = np.array([e.ids], dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
            self.feeds.append({k: v for k, v in feed.items() if k in names})
        self.it = iter(self.feeds)

    def get_next(self):
        return next(self.it, None)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", type=Path)
    p.add_argument("--method", default="minmax", choices=["minmax", "entropy"])
    p.add_argument("--texts", type=int, default=256)
    p.add_argument("--format", default="qdq", choices=["qdq", "qoperator"],
                   help="qdq: QuantizeLinear/DequantizeLinear pairs, int8 activations; qoperator: QLinearMatMul "
                        "with uint8 activations (ONNX Runtime's u8s8 CPU kernels)")
    a = p.parse_args()
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy}[a.method]
    suffix = "" if a.format == "qdq" else "-qop"
    out = a.model_dir / f"model.int8-static-{a.method}{suffix}.onnx"
    qdq = a.format == "qdq"
    quantize_static(str(a.model_dir / "model.onnx"), str(out), Sentences(a.model_dir, a.texts),
                    quant_format=QuantFormat.QDQ if qdq else QuantFormat.QOperator, per_channel=True,
                    op_types_to_quantize=["MatMul"], activation_type=QuantType.QInt8 if qdq else QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=method)
    print(f"{out}: {out.stat().st_size / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
