"""Only some MatMuls quantised (the export's plain dynamic quantisation), the rest fp32: which
kind of MatMul carries the int8 graph's error.

  quantise_only.py SRC OUT WHICH    WHICH: qkv, attn_out, ffn1, ffn2, or Lk (layer k's six)
"""
import sys, onnx
from onnxruntime.quantization import QuantType, quantize_dynamic
src, out, which = sys.argv[1], sys.argv[2], sys.argv[3]
m = onnx.load(src, load_external_data=False)
inits = {i.name for i in m.graph.initializer}
names = [n.name for n in m.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
def kind(n):
    if "intermediate" in n: return "ffn1"
    if "attention" in n and ("output" in n or "/o/" in n): return "attn_out"
    if "attention" in n: return "qkv"
    if "output/dense" in n: return "ffn2"
    return "other"
def layer(n): return int(n.split("layer.")[1].split("/")[0]) if "layer." in n else -1
if which.startswith("L"): keep = [n for n in names if layer(n) == int(which[1:])]
else: keep = [n for n in names if kind(n) == which]
excl = [n for n in names if n not in keep]
print(which, len(keep), "quantised", keep[:2])
quantize_dynamic(src, out, per_channel=True, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8, nodes_to_exclude=excl)
