#!/usr/bin/env python3
"""How far the int8 graph is from fp32: hidden-state cosine on the Rotten Tomatoes
test sentences, with Python onnxruntime on the same exported files.

    python bench/int8.py [--model-dir models/all-minilm-l6-v2] [--n 1031]

Prints, over the sentences: the mean and minimum cosine between the fp32 and
int8 mean-pooled vectors, the same for [CLS], the mean per-token cosine, and
each graph's speed here (sorted batches of 32, 2 threads). Head accuracy with
int8 comes from `distilserve train --head sentiment --model-file model.int8.onnx`.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent


def run(session, inputs, batches):
    out = []
    started = time.perf_counter()
    for ids, mask in batches:
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        out.append(session.run(["last_hidden_state"], feed)[0])
    return out, time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=ROOT / "models/all-minilm-l6-v2")
    p.add_argument("--data", type=Path, default=ROOT / "data/rotten_tomatoes/test.jsonl")
    p.add_argument("--n", type=int, default=1031)
    a = p.parse_args()
    manifest = json.loads((a.model_dir / "manifest.json").read_text())
    pad = manifest.get("pad_token_id", 0)
    texts = [json.loads(line)["text"] for line in open(a.data, encoding="utf-8")][: a.n]
    tok = Tokenizer.from_file(str(a.model_dir / "tokenizer.json"))
    enc = sorted(tok.encode_batch(texts), key=lambda e: len(e.ids))
    batches = []
    for i in range(0, len(enc), 32):
        chunk = enc[i:i + 32]
        s = max(len(e.ids) for e in chunk)
        ids = np.full((len(chunk), s), pad, dtype=np.int64)
        mask = np.zeros_like(ids)
        for j, e in enumerate(chunk):
            ids[j, :len(e.ids)] = e.ids
            mask[j, :len(e.ids)] = 1
        batches.append((ids, mask))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    results = {}
    for name in ("model.onnx", "model.int8.onnx"):
        session = ort.InferenceSession(str(a.model_dir / name), options, providers=["CPUExecutionProvider"])
        run(session, manifest["inputs"], batches[:4])  # warm-up
        results[name] = run(session, manifest["inputs"], batches)

    def cos(u, v):
        return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-12))

    mean_cos, cls_cos, token_cos = [], [], []
    for (ids, mask), full, quant in zip(batches, results["model.onnx"][0], results["model.int8.onnx"][0]):
        for j in range(len(ids)):
            n = int(mask[j].sum())
            f, q = full[j, :n], quant[j, :n]
            mean_cos.append(cos(f.mean(0), q.mean(0)))
            cls_cos.append(cos(f[0], q[0]))
            token_cos.extend(cos(f[t], q[t]) for t in range(n))
    speed = {k: len(texts) / v[1] for k, v in results.items()}
    print(f"{manifest['name']}, {len(texts)} test sentences, fp32 vs int8 (Python onnxruntime {ort.__version__}):")
    print(f"  mean-pooled cosine: mean {np.mean(mean_cos):.4f}, min {np.min(mean_cos):.4f}")
    print(f"  [CLS] cosine:       mean {np.mean(cls_cos):.4f}, min {np.min(cls_cos):.4f}")
    print(f"  per-token cosine:   mean {np.mean(token_cos):.4f}, min {np.min(token_cos):.4f}")
    print(f"  speed (sorted batches of 32, 2 threads): fp32 {speed['model.onnx']:.0f}/s, "
          f"int8 {speed['model.int8.onnx']:.0f}/s ({speed['model.int8.onnx'] / speed['model.onnx']:.2f}x)")


if __name__ == "__main__":
    main()
