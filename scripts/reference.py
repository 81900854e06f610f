#!/usr/bin/env python3
"""Reference last hidden states from Python ONNX Runtime, for distilserve's tests.

    reference.py MODEL_DIR OUT.json (--texts-jsonl FILE --n N | --text T ...)

Tokenizes with the model's tokenizer.json (truncation at its maximum, no padding),
runs each text alone through model.onnx with onnxruntime (CPU), and writes the
token ids, word pieces and the last hidden state of every real token. The Rust
encoder must reproduce these from the same files.
"""
import argparse
import json
import os
import sys
from pathlib import Path


def reference_outputs(model_dir: Path, texts: list[str], model_file: str = "model.onnx",
                      layers: bool = False) -> dict:
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    manifest = json.loads((model_dir / "manifest.json").read_text())
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    sess = ort.InferenceSession(str(model_dir / model_file), providers=["CPUExecutionProvider"])
    inputs = manifest["inputs"]
    output = manifest["outputs"][0]
    # With `layers`, every earlier layer's hidden states too (hidden_state_0 ..).
    extra = manifest.get("layer_outputs", []) if layers else []
    items = []
    for text in texts:
        enc = tok.encode(text)
        ids = np.array([enc.ids], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if "token_type_ids" in inputs:
            feed["token_type_ids"] = np.array([enc.type_ids], dtype=np.int64)
        outs = sess.run([output, *extra], feed)
        item = {"text": text, "ids": enc.ids, "tokens": enc.tokens,
                output: outs[0][0].astype(float).round(7).tolist()}
        for name, value in zip(extra, outs[1:]):
            item[name] = value[0].astype(float).round(7).tolist()
        items.append(item)
    return {"model": manifest["name"], "model_file": model_file, "output": output,
            "onnxruntime": ort.__version__, "items": items}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--texts-jsonl", type=Path)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--text", action="append", default=[])
    a = p.parse_args()
    texts = list(a.text)
    if a.texts_jsonl:
        with open(a.texts_jsonl, encoding="utf-8") as f:
            for line in f:
                if len(texts) >= a.n + len(a.text):
                    break
                texts.append(json.loads(line)["text"])
    ref = reference_outputs(a.model_dir, texts)
    tmp = a.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(ref) + "\n")
    os.replace(tmp, a.out)
    print(f"[setup] reference outputs for {len(texts)} texts written to {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
