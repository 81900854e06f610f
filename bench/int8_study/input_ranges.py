import json, sys
import numpy as np, onnx, onnxruntime as ort
from tokenizers import Tokenizer
md = sys.argv[1]
m = onnx.load(f"{md}/model.onnx")
inits = {i.name for i in m.graph.initializer}
targets = {}
for n in m.graph.node:
    if n.op_type == "MatMul" and n.input[1] in inits:
        targets.setdefault(n.input[0], []).append(n.name.split("/")[-3] + "/" + n.name.split("/")[-2] if "layer." in n.name else n.name)
for t in targets:
    m.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
tok = Tokenizer.from_file(f"{md}/tokenizer.json"); tok.no_padding()
texts = [json.loads(l)["text"] for l in open("data/rotten_tomatoes/test.jsonl")][:40]
names = [i.name for i in s.get_inputs()]
stats = {t: [] for t in targets}
for text in texts:
    ids = np.array([tok.encode(text).ids], np.int64)
    f = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    outs = s.run(list(targets), {k: v for k, v in f.items() if k in names})
    for t, o in zip(targets, outs):
        stats[t].append((np.abs(o).max(), o.std(), np.percentile(np.abs(o), 99.9)))
for t, v in stats.items():
    a = np.array(v)
    print(f"{t[:60]:60s} max {a[:,0].mean():9.2f} std {a[:,1].mean():7.3f} max/std {np.mean(a[:,0]/a[:,1]):7.1f} p99.9/std {np.mean(a[:,2]/a[:,1]):5.1f}")
