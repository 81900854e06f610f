import json, time, sys
import numpy as np, onnxruntime as ort
from tokenizers import Tokenizer
md = sys.argv[1]
tok = Tokenizer.from_file(f"{md}/tokenizer.json")
texts = [json.loads(l)["text"] for l in open("data/rotten_tomatoes/test.jsonl")][:256]
def feeds(batch, names):
    encs = tok.encode_batch(batch)
    L = max(len(e.ids) for e in encs)
    ids = np.zeros((len(batch), L), np.int64); m = np.zeros_like(ids)
    for i, e in enumerate(encs):
        ids[i, :len(e.ids)] = e.ids; m[i, :len(e.ids)] = 1
    f = {"input_ids": ids, "attention_mask": m, "token_type_ids": np.zeros_like(ids)}
    return {k: v for k, v in f.items() if k in names}
for graph in sys.argv[2:]:
    o = ort.SessionOptions(); o.intra_op_num_threads = int(__import__("os").environ.get("T","2"))
    s = ort.InferenceSession(f"{md}/{graph}", o, providers=["CPUExecutionProvider"])
    names = [i.name for i in s.get_inputs()]
    for bs in (1, 32):
        s.run(None, feeds(texts[:bs], names))
        t = time.perf_counter()
        for i in range(0, len(texts), bs):
            s.run(None, feeds(texts[i:i+bs], names))
        dt = time.perf_counter() - t
        print(f"{graph} batch {bs}: {len(texts)/dt:.0f} sent/s", flush=True)
