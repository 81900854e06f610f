#!/usr/bin/env python3
"""Feature-extraction speed: `distilserve extract` against Python onnxruntime on
the same model, texts and thread count, in one run.

    python bench/extraction.py [--bin target/release/distilserve] [--split train] [--threads 2]

Python runs the notebook's way (batches of 64 in file order, padded to the
longest) and, for fairness, with the batches sorted by length as distilserve
does. distilserve runs with an empty feature cache. Prints texts/second and ratios.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent


def python_rate(model_dir: Path, texts: list[str], threads: int, sort: bool) -> float:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    inputs = {i.name for i in sess.get_inputs()}
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    start = time.perf_counter()
    encs = tok.encode_batch(texts)
    order = sorted(range(len(encs)), key=lambda i: len(encs[i].ids)) if sort else list(range(len(encs)))
    for b in range(0, len(order), 64):
        batch = [encs[i] for i in order[b:b + 64]]
        n = max(len(e.ids) for e in batch)
        ids = np.zeros((len(batch), n), np.int64)
        mask = np.zeros_like(ids)
        for r, e in enumerate(batch):
            ids[r, :len(e.ids)] = e.ids
            mask[r, :len(e.ids)] = 1
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        out = sess.run(["last_hidden_state"], feed)[0]
        _ = out[:, 0]  # [CLS]
    return len(texts) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=str(ROOT / "target/release/distilserve"))
    p.add_argument("--model", default=str(ROOT / "models/all-minilm-l6-v2"))
    p.add_argument("--data", default=str(ROOT / "data/rotten_tomatoes"))
    p.add_argument("--split", default="train")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    texts = [json.loads(l)["text"] for l in open(Path(a.data) / f"{a.split}.jsonl", encoding="utf-8")]

    unsorted = python_rate(Path(a.model), texts, a.threads, sort=False)
    sorted_ = python_rate(Path(a.model), texts, a.threads, sort=True)
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, DISTILSERVE_CLASSIFY__FEATURE_CACHE_DIR=str(Path(tmp) / "cache"))
        start = time.perf_counter()
        subprocess.run([a.bin, "extract", "--data", a.data, "--split", a.split, "--out", str(Path(tmp) / "out"),
                        "--model-dir", a.model, "--intra-threads", str(a.threads), "--log-filter", "warn"],
                       check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        ours = len(texts) / (time.perf_counter() - start)
    print(f"{len(texts)} texts of {a.data}/{a.split}, {a.threads} threads, model {a.model}")
    print(f"  python onnxruntime, batches of 64 in file order   {unsorted:7.1f} texts/s")
    print(f"  python onnxruntime, batches of 64 sorted by length {sorted_:7.1f} texts/s")
    print(f"  distilserve extract (process start and model load included) {ours:7.1f} texts/s")
    print(f"  ratio distilserve / python file order {ours / unsorted:.2f}, / python sorted {ours / sorted_:.2f}")


if __name__ == "__main__":
    sys.exit(main())
