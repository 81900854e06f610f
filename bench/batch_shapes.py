#!/usr/bin/env python3
"""What batch shapes cost the model, in-process with Python onnxruntime (2 threads):
the Rotten Tomatoes test sentences sorted by length in batches of 64/32/16/8/4, and
in random groups of 32 (what 32 clients sending one sentence each put in flight),
computed whole or split by length the way the service's planner does (a call costs
`overhead` tokens plus its padded tokens).

    python bench/batch_shapes.py [--model-dir models/all-minilm-l6-v2]

BENCHMARKS.md quotes its figures beside the benchmark's 32-in-flight bound.
"""
import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent


def split(group, overhead):
    """Least-cost split of a group sorted by length into consecutive runs."""
    g = sorted(group, key=len)
    best, cut = [0.0] + [float("inf")] * len(g), [0] * (len(g) + 1)
    for end in range(1, len(g) + 1):
        for start in range(end):
            cost = best[start] + overhead + (end - start) * len(g[end - 1])
            if cost < best[end]:
                best[end], cut[end] = cost, start
    runs, end = [], len(g)
    while end > 0:
        runs.append(g[cut[end]:end])
        end = cut[end]
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=ROOT / "models/all-minilm-l6-v2")
    p.add_argument("--data", type=Path, default=ROOT / "data/rotten_tomatoes/test.jsonl")
    a = p.parse_args()
    pad = json.loads((a.model_dir / "manifest.json").read_text()).get("pad_token_id", 0)
    texts = [json.loads(line)["text"] for line in open(a.data, encoding="utf-8")]
    enc = [e.ids for e in Tokenizer.from_file(str(a.model_dir / "tokenizer.json")).encode_batch(texts)]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(a.model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}

    def run(groups):
        started, n = time.perf_counter(), 0
        for g in groups:
            ids = np.full((len(g), max(len(x) for x in g)), pad, dtype=np.int64)
            mask = np.zeros_like(ids)
            for j, x in enumerate(g):
                ids[j, :len(x)], mask[j, :len(x)] = x, 1
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in names:
                feed["token_type_ids"] = np.zeros_like(ids)
            session.run(["last_hidden_state"], feed)
            n += len(g)
        return n / (time.perf_counter() - started)

    srt = sorted(enc, key=len)
    run([srt[i:i + 32] for i in range(0, len(srt), 32)])  # warm-up
    for k in (64, 32, 16, 8, 4):
        print(f"sorted batches of {k}: {run([srt[i:i + k] for i in range(0, len(srt), k)]):.0f} sentences/s")
    random.seed(1)
    shuffled = enc[:]
    random.shuffle(shuffled)
    for overhead in (0, 16, 32, 64):
        groups = [shuffled[i:i + 32] for i in range(0, len(shuffled), 32)]
        if overhead:
            groups = [run_ for g in groups for run_ in split(g, overhead)]
        padded = sum(len(g) * max(len(x) for x in g) for g in groups)
        real = sum(len(x) for g in groups for x in g)
        what = f"split, a call costing {overhead} tokens" if overhead else "computed whole"
        print(f"random groups of 32, {what}: {run(groups):.0f} sentences/s, "
              f"mean batch {np.mean([len(g) for g in groups]):.1f}, padding efficiency {real / padded:.2f}")


if __name__ == "__main__":
    main()
