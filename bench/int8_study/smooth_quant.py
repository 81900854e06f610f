"""SmoothQuant before the export's dynamic quantisation: move the activation outliers of every
weight MatMul's input into its weights, exactly, then quantise as the export does.

  smooth_quant.py MODEL_DIR OUT ALPHA [N]

For each input X shared by weight MatMuls W_k, with per-channel maxima over N training
sentences (one per call), s_j = max|X_j|^alpha / max_k max|W_k[j,:]|^(1-alpha); a Mul by 1/s
is inserted on X and each W_k's row j is multiplied by s_j. In fp32 the graph computes the same
function (up to rounding); int8's per-tensor activation scale then sees flatter channels.
"""
import json, sys
import numpy as np, onnx, onnxruntime as ort
from onnx import numpy_helper, helper, TensorProto
from tokenizers import Tokenizer
from onnxruntime.quantization import QuantType, quantize_dynamic

md, out, alpha = sys.argv[1], sys.argv[2], float(sys.argv[3])
n_sent = int(sys.argv[4]) if len(sys.argv) > 4 else 200
m = onnx.load(f"{md}/model.onnx")
inits = {i.name: i for i in m.graph.initializer}
consumers = {}
for n in m.graph.node:
    if n.op_type == "MatMul" and n.input[1] in inits:
        consumers.setdefault(n.input[0], []).append(n)

probe = onnx.load(f"{md}/model.onnx", load_external_data=False)
for x in consumers:
    probe.graph.output.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, None))
so = ort.SessionOptions(); so.intra_op_num_threads = 2
sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
names = [i.name for i in sess.get_inputs()]
tok = Tokenizer.from_file(f"{md}/tokenizer.json"); tok.no_padding()
texts = [json.loads(l)["text"] for l in open("data/rotten_tomatoes/train.jsonl")][:n_sent]
xmax = {x: None for x in consumers}
for text in texts:
    ids = np.array([tok.encode(text).ids], np.int64)
    f = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    outs = sess.run(list(consumers), {k: v for k, v in f.items() if k in names})
    for x, o in zip(consumers, outs):
        a = np.abs(o).reshape(-1, o.shape[-1]).max(0)
        xmax[x] = a if xmax[x] is None else np.maximum(xmax[x], a)
del sess, probe

new_nodes = []
for x, nodes in consumers.items():
    ws = [numpy_helper.to_array(inits[n.input[1]]) for n in nodes]
    wmax = np.max([np.abs(w).max(1) for w in ws], axis=0)
    s = np.clip(xmax[x], 1e-5, None) ** alpha / np.clip(wmax, 1e-5, None) ** (1 - alpha)
    s = np.clip(s, 1e-3, 1e3).astype(np.float32)
    inv = x + "/smooth_inv_scale"
    m.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv))
    xs = x + "/smoothed"
    new_nodes.append((nodes[0], helper.make_node("Mul", [x, inv], [xs], name=x + "/smooth")))
    for n, w in zip(nodes, ws):
        inits[n.input[1]].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), n.input[1]))
        n.input[0] = xs
    print(f"{x[:70]:70s} max|X| {xmax[x].max():8.2f} -> {(xmax[x] / s).max():7.2f}")
# Insert each Mul just before its first consumer so the graph stays topologically sorted.
order = list(m.graph.node)
for first, mul in new_nodes:
    order.insert(order.index(first), mul)
del m.graph.node[:]
m.graph.node.extend(order)
tmp = out + ".fp32.onnx"
onnx.save(m, tmp)
quantize_dynamic(tmp, out, per_channel=True, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
print("wrote", out, "and", tmp)
