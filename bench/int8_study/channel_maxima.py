"""Per-channel largest |x| of the FFN's second-matrix inputs and the post-attention LayerNorm
outputs, over N training sentences (one per call): the outlier channels the export keeps fp32.

  channel_maxima.py MODEL_DIR [N]
"""
import json, sys
import numpy as np, onnx, onnxruntime as ort
from onnx import helper, TensorProto
from tokenizers import Tokenizer
md = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 200
m = onnx.load(f"{md}/model.onnx", load_external_data=False)
inits = {i.name for i in m.graph.initializer}
xs = []
for node in m.graph.node:
    if node.op_type == "MatMul" and node.input[1] in inits and node.input[0] not in xs and (
            "intermediate_act_fn" in node.input[0] or "LayerNorm" in node.input[0]):
        xs.append(node.input[0])
outputs = {o.name for o in m.graph.output}
for x in xs:
    if x not in outputs:
        m.graph.output.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, None))
s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
names = [i.name for i in s.get_inputs()]
tok = Tokenizer.from_file(f"{md}/tokenizer.json"); tok.no_padding()
largest = {}
for line in list(open("data/rotten_tomatoes/train.jsonl"))[:n]:
    ids = np.array([tok.encode(json.loads(line)["text"]).ids], np.int64)
    f = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    for x, o in zip(xs, s.run(xs, {k: v for k, v in f.items() if k in names})):
        a = np.abs(o[0]).max(0)
        largest[x] = np.maximum(largest[x], a) if x in largest else a
for x in xs:
    a = np.sort(largest[x])[::-1]
    print(f"{x[:75]:75s} {len(a):5d} channels: largest {[round(float(v), 1) for v in a[:5]]}, "
          f"above 4x median {int((a > 4 * np.median(a)).sum())}, median {np.median(a):.2f}")
