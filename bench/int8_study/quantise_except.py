import sys, onnx
from onnxruntime.quantization import QuantType, quantize_dynamic
src = sys.argv[1]; out = sys.argv[2]; which = sys.argv[3]
m = onnx.load(src, load_external_data=False)
names = [n.name for n in m.graph.node if n.op_type == "MatMul"]
L = max(int(n.split("layer.")[1].split("/")[0]) for n in names if "layer." in n)
excl = {
  "none": [],
  "ffn2": [n for n in names if "output/dense" in n and "attention" not in n],
  "last": [n for n in names if f"layer.{L}/" in n],
  "first": [n for n in names if "layer.0/" in n],
  "firstlast": [n for n in names if "layer.0/" in n or f"layer.{L}/" in n],
  "ffn2last2": [n for n in names if ("output/dense" in n and "attention" not in n) and (f"layer.{L}/" in n or f"layer.{L-1}/" in n)],
}.get(which) if not which.startswith("ffn2:") else [n for n in names if "output/dense" in n and "attention" not in n and any(f"layer.{k}/" in n for k in which[5:].split(","))]
print(which, len(excl), "excluded")
quantize_dynamic(src, out, per_channel=True, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8, nodes_to_exclude=excl)
