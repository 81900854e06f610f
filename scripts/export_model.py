#!/usr/bin/env python3
"""Export a Hugging Face encoder to ONNX for distilserve.

    python scripts/export_model.py SOURCE OUT_DIR [--name NAME] [--task feature-extraction]

SOURCE is a local model directory (config.json + weights + tokenizer) or, where a
model hub is reachable, a hub id such as `distilbert-base-uncased`.

Writes into OUT_DIR:
  model.onnx        fp32 graph; inputs input_ids, attention_mask (and token_type_ids
                    when the architecture has them); output last_hidden_state
                    (or logits for --task sequence-classification)
  model.int8.onnx   dynamically quantised copy (QInt8 weights), unless --no-int8
  model.opt.onnx    fp32 graph with attention, layer norm and GELU fused offline by
                    onnxruntime.transformers (BERT-family encoders), unless --no-fused
  tokenizer.json    fast tokenizer with padding removed (the service pads each batch
                    to its longest member) and truncation at the model's maximum
  config.json       the model's configuration
  manifest.json     files with sizes and sha256, hidden size, input/output names,
                    source, versions; distilserve reads it at startup
Every file is written to a temporary name and renamed, manifest last, so an
interrupted export never looks complete.
"""
import argparse
import hashlib
import inspect
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

FORMAT_VERSION = 1


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def fix_tokenizer(src: Path, dest: Path, max_tokens: int) -> None:
    tok = json.loads(src.read_text())
    # A baked-in Fixed(128) padding would make every request pay for 128 tokens.
    tok["padding"] = None
    tok["truncation"] = {
        "direction": "Right",
        "max_length": max_tokens,
        "strategy": "LongestFirst",
        "stride": 0,
    }
    atomic_json(dest, tok)


def fuse(src: Path, dest: Path, config) -> bool:
    """Offline graph fusion; False (with a note) where the optimizer does not apply."""
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", None)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", None)
    try:
        from onnxruntime.transformers import optimizer
        m = optimizer.optimize_model(str(src), model_type="bert", num_heads=int(heads), hidden_size=int(hidden),
                                     opt_level=0)
        m.save_model_to_file(str(dest))
    except Exception as e:  # noqa: BLE001 - any failure just means no fused copy
        print(f"[export] no fused copy: {e}", file=sys.stderr)
        return False
    fused = {k: v for k, v in m.get_fused_operator_statistics().items() if v}
    print(f"[export] fused operators: {fused}", file=sys.stderr)
    return True


def export(source: str, out: Path, name: str, task: str, int8: bool, fused: bool, opset: int,
           source_info: dict) -> dict:
    import torch
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(source)
    if task == "feature-extraction":
        from transformers import AutoModel as Auto
        output_name = "last_hidden_state"
    elif task == "sequence-classification":
        from transformers import AutoModelForSequenceClassification as Auto
        output_name = "logits"
    else:
        sys.exit(f"unknown task {task!r}")
    # Eager attention traces to plain ONNX ops; the SDPA path does not export faithfully.
    model = Auto.from_pretrained(source, attn_implementation="eager")
    model.eval()

    params = inspect.signature(model.forward).parameters
    input_names = ["input_ids", "attention_mask"]
    if "token_type_ids" in params and getattr(config, "type_vocab_size", 0):
        input_names.append("token_type_ids")

    tokenizer = AutoTokenizer.from_pretrained(source)
    max_positions = getattr(config, "max_position_embeddings", 512)
    tok_max = getattr(tokenizer, "model_max_length", max_positions) or max_positions
    max_tokens = int(min(max_positions, tok_max))

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        tokenizer.save_pretrained(tmp / "tok")
        if not (tmp / "tok" / "tokenizer.json").exists():
            sys.exit("the tokenizer has no fast (tokenizer.json) version; distilserve needs one")

        sample = tokenizer(["a short example", "and a somewhat longer second example sentence"],
                           padding=True, return_tensors="pt")
        args = tuple(sample[n] for n in input_names)

        class Wrapper(torch.nn.Module):
            # Positional inputs in a fixed order and a single named output.
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, *tensors):
                kwargs = dict(zip(input_names, tensors))
                result = self.inner(**kwargs)
                return result[0]

        # export() restores the wrapper's train/eval mode afterwards, recursively:
        # a wrapper left in training mode would switch dropout on in the model.
        wrapped = Wrapper(model).eval()
        with torch.no_grad():
            want = wrapped(*args).numpy()

        dynamic = {n: {0: "batch", 1: "sequence"} for n in input_names}
        dynamic[output_name] = {0: "batch", 1: "sequence"} if output_name == "last_hidden_state" else {0: "batch"}
        fp32_tmp = tmp / "model.onnx"
        with torch.no_grad():
            torch.onnx.export(wrapped, args, str(fp32_tmp), input_names=input_names,
                              output_names=[output_name], dynamic_axes=dynamic,
                              opset_version=opset, do_constant_folding=True, dynamo=False)

        import onnx
        onnx.checker.check_model(str(fp32_tmp))

        # Check the export against PyTorch on the masked-in positions.
        import numpy as np
        import onnxruntime as ort
        sess = ort.InferenceSession(str(fp32_tmp), providers=["CPUExecutionProvider"])
        got = sess.run([output_name], {n: sample[n].numpy().astype(np.int64) for n in input_names})[0]
        if output_name == "last_hidden_state":
            mask = sample["attention_mask"].numpy().astype(bool)
            diff = float(np.abs(got[mask] - want[mask]).max())
        else:
            diff = float(np.abs(got - want).max())
        print(f"[export] onnx vs torch max abs diff on real tokens: {diff:.2e}", file=sys.stderr)
        if diff > 1e-3:
            sys.exit(f"exported graph disagrees with PyTorch (max abs diff {diff})")

        files = {"model.onnx": fp32_tmp}
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic
            int8_tmp = tmp / "model.int8.onnx"
            quantize_dynamic(str(fp32_tmp), str(int8_tmp), weight_type=QuantType.QInt8)
            files["model.int8.onnx"] = int8_tmp
        if fused:
            opt_tmp = tmp / "model.opt.onnx"
            if fuse(fp32_tmp, opt_tmp, config):
                files["model.opt.onnx"] = opt_tmp

        fix_tokenizer(tmp / "tok" / "tokenizer.json", tmp / "tokenizer.json", max_tokens)
        files["tokenizer.json"] = tmp / "tokenizer.json"
        cfg = config.to_dict()
        atomic_json(tmp / "config.json", cfg)
        files["config.json"] = tmp / "config.json"

        # Remove a previous manifest first: a half-replaced directory must not
        # look complete if this is interrupted.
        (out / "manifest.json").unlink(missing_ok=True)
        for fname, path in files.items():
            shutil.copyfile(path, out / (fname + ".tmp"))
            os.replace(out / (fname + ".tmp"), out / fname)

    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim")
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "task": task,
        "architecture": (config.architectures or [type(model).__name__])[0],
        "model_type": config.model_type,
        "hidden_size": int(hidden),
        "max_tokens": max_tokens,
        "inputs": input_names,
        "outputs": [output_name],
        "source": source_info,
        "exported_with": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnxruntime": ort.__version__,
            "opset": opset,
        },
        "files": {fname: {"bytes": (out / fname).stat().st_size, "sha256": sha256(out / fname)}
                  for fname in files},
    }
    if task == "sequence-classification":
        manifest["labels"] = [config.id2label[i] for i in range(config.num_labels)]
    atomic_json(out / "manifest.json", manifest)
    return manifest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="local Hugging Face model directory or hub id")
    p.add_argument("out", type=Path, help="output directory, e.g. models/distilbert-base-uncased")
    p.add_argument("--name", help="model name reported by the service (default: OUT's folder name)")
    p.add_argument("--task", default="feature-extraction",
                   choices=["feature-extraction", "sequence-classification"])
    p.add_argument("--no-int8", action="store_true", help="skip the int8 quantised copy")
    p.add_argument("--no-fused", action="store_true", help="skip the offline-fused fp32 copy")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--source-info", default=None,
                   help="JSON object recorded as the manifest's source (default: {\"model\": SOURCE})")
    a = p.parse_args()
    info = json.loads(a.source_info) if a.source_info else {"model": a.source}
    m = export(a.source, a.out, a.name or a.out.name, a.task, not a.no_int8, not a.no_fused, a.opset, info)
    print(json.dumps({"name": m["name"], "hidden_size": m["hidden_size"], "inputs": m["inputs"],
                      "files": {k: v["bytes"] for k, v in m["files"].items()}}), file=sys.stderr)


if __name__ == "__main__":
    main()
