import json, sys, time
import numpy as np, onnxruntime as ort
from tokenizers import Tokenizer
md = sys.argv[1]
tok = Tokenizer.from_file(f"{md}/tokenizer.json"); tok.no_padding()
texts = [json.loads(l)["text"] for l in open("data/rotten_tomatoes/test.jsonl")][:300]
encs = tok.encode_batch(texts)
def run(path):
    o = ort.SessionOptions(); o.intra_op_num_threads = 2
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    names = [i.name for i in s.get_inputs()]
    out = []; t = time.perf_counter()
    for e in encs:
        ids = np.array([e.ids], np.int64)
        f = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        out.append(s.run(["last_hidden_state"], {k: v for k, v in f.items() if k in names})[0][0].mean(0))
    return np.stack(out), len(texts) / (time.perf_counter() - t)
ref, sp = run(f"{md}/model.onnx"); print(f"fp32: {sp:.0f} sent/s", flush=True)
for p in sys.argv[2:]:
    x, s = run(p)
    rel = np.linalg.norm(x - ref, axis=1) / np.linalg.norm(ref, axis=1)
    cos = (x * ref).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(ref, axis=1)
    print(f"{p}: {s:.0f} sent/s ({s/sp:.2f}x), rel err mean {rel.mean():.4f} max {rel.max():.4f}, 1-cos mean {(1-cos).mean():.2e}", flush=True)
