import json, time, sys
import numpy as np, onnxruntime as ort
from tokenizers import Tokenizer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
md = sys.argv[1]
tok = Tokenizer.from_file(f"{md}/tokenizer.json"); tok.no_padding(); tok.enable_truncation(128)
def load(split):
    rows = [json.loads(l) for l in open(f"data/rotten_tomatoes/{split}.jsonl")]
    return [r["text"] for r in rows], np.array([r["label"] for r in rows])
data = {s: load(s) for s in ("train", "validation", "test")}
def feats(sess, texts, bs):
    names = [i.name for i in sess.get_inputs()]
    encs = tok.encode_batch(texts)
    order = np.argsort([len(e.ids) for e in encs]) if bs > 1 else np.arange(len(texts))
    out = np.zeros((len(texts), 0), np.float32); res = [None]*len(texts)
    for i in range(0, len(texts), bs):
        idx = order[i:i+bs]; L = max(len(encs[j].ids) for j in idx)
        ids = np.zeros((len(idx), L), np.int64); m = np.zeros_like(ids)
        for k, j in enumerate(idx):
            ids[k, :len(encs[j].ids)] = encs[j].ids; m[k, :len(encs[j].ids)] = 1
        f = {"input_ids": ids, "attention_mask": m, "token_type_ids": np.zeros_like(ids)}
        h = sess.run(["last_hidden_state"], {k: v for k, v in f.items() if k in names})[0]
        pooled = (h * m[..., None]).sum(1) / m.sum(1, keepdims=True)
        for k, j in enumerate(idx): res[j] = pooled[k]
    return np.stack(res)
for spec in sys.argv[2:]:
    graph, bs = spec.split(":"); bs = int(bs)
    o = ort.SessionOptions(); o.intra_op_num_threads = 2
    s = ort.InferenceSession(f"{md}/{graph}", o, providers=["CPUExecutionProvider"])
    t = time.time()
    X = {k: feats(s, v[0], bs) for k, v in data.items()}
    np.savez(f"/tmp/feats-{md.split('/')[-1]}-{graph}-{bs}.npz", **X)
    sc = StandardScaler().fit(X["train"])
    best = None
    for C in (0.001, 0.003, 0.01, 0.03, 0.1, 1):
        lr = LogisticRegression(C=C, max_iter=2000).fit(sc.transform(X["train"]), data["train"][1])
        v = lr.score(sc.transform(X["validation"]), data["validation"][1])
        if best is None or v > best[0]: best = (v, C, lr.score(sc.transform(X["test"]), data["test"][1]))
    print(f"{graph} batch {bs}: val {best[0]:.4f} C {best[1]} test {best[2]:.4f} ({time.time()-t:.0f} s)", flush=True)
