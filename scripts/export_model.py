#!/usr/bin/env python3
"""Export a Hugging Face encoder to ONNX for distilserve.

    python scripts/export_model.py SOURCE OUT_DIR [--name NAME] [--task feature-extraction]

SOURCE is a local model directory (config.json + weights + tokenizer) or, where a
model hub is reachable, a hub id such as `distilbert-base-uncased`.

Writes into OUT_DIR:
  model.onnx        fp32 graph; inputs input_ids, attention_mask (and token_type_ids
                    when the architecture has them); output last_hidden_state
                    (or logits for --task sequence-classification), and for
                    feature extraction every earlier layer's hidden states as
                    hidden_state_0 (embeddings) ... hidden_state_{N-1}: the service
                    asks ONNX Runtime only for the outputs a request needs
  model.int8.onnx   dynamically quantised copy (QInt8 weights of every MatMul, per channel; where
                    that moves the output by over 20% on --calibration-texts, the few outlier input
                    channels found there kept fp32), unless --no-int8
  model.opt.onnx    fp32 graph with attention, layer norm and GELU fused offline by
                    onnxruntime.transformers (BERT-family encoders), unless --no-fused
  tokenizer.json    fast tokenizer with padding removed (the service pads each batch
                    to its longest member) and truncation at the model's maximum
  config.json       the model's configuration
  manifest.json     files with sizes and sha256, hidden size, layers, input/output
                    names, pad token id, source, versions; distilserve reads it at startup
  torch_reference.json  PyTorch's last hidden states of a few texts (real tokens
                    only), which tests compare the service's /embed against
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


# The int8 graph: weights of every MatMul quantised per output channel,
# activations per tensor at run time (dynamic); the embedding tables (Gather)
# stay fp32. Measured on MiniLM's default head (Rotten Tomatoes test accuracy,
# the same search on each graph's features): fp32 0.7856, this 0.7818 (-0.4
# points), the quantiser's defaults (per tensor, Gather too) 0.7779 (-0.8), per
# channel with Gather 0.7798 (-0.6); BENCHMARKS.md "Heads on the int8 graph".
#
# Where needed (below), the few input channels that carry outliers are split
# off before quantising and kept fp32 (LLM.int8()'s decomposition): one activation scale per tensor
# cannot serve values of 2 and of 90 at once. all-mpnet-base-v2's FFN inputs
# reach 60-100 in one to four of 3,072 channels where the median channel stays
# below 3; quantised whole, its mean-pooled features moved by 45% of their norm,
# with the split by 8% (MiniLM: 12% -> 6%), at 0.92-1.14x the plain int8
# graph's single-sentence speed (Python, two runs each); the head on its
# features came within 0.1 test points of fp32's where plain int8 lost 0.9;
# BENCHMARKS.md "Outlier channels kept fp32".
#
# The split costs MiniLM 6-9% of its int8 speed (Python, single sentences, three
# of four rounds) in extra small ops and buys its
# head nothing (0.7876 against 0.7886 quantised whole), so it is done only where
# quantising whole moves the pooled output by more than a fifth of its norm
# (MiniLM 12%, all-mpnet-base-v2 45%), measured on the calibration sentences.
PLAIN_INT8_MAX_ERROR = 0.2
OUTLIER_RATIO = 4.0  # a channel is an outlier above 4x the median channel's largest |x|
OUTLIER_SHRINK = 2.0  # split an input only where that halves its range or better
CALIBRATION_SENTENCES = 200
INT8_QUANTISATION = {"per_channel": True, "op_types": ["MatMul"], "weights": "QInt8",
                     "outlier_channels": {"when_plain_error_above": PLAIN_INT8_MAX_ERROR,
                                          "ratio": OUTLIER_RATIO, "shrink": OUTLIER_SHRINK}}


def int8_args():
    from onnxruntime.quantization import QuantType
    return {"per_channel": True, "op_types_to_quantize": ["MatMul"], "weight_type": QuantType.QInt8}


def split_outlier_channels(model, feeds, ratio=OUTLIER_RATIO, shrink=OUTLIER_SHRINK):
    """Rewrites `model` (an fp32 onnx ModelProto, in place) so that every weight MatMul
    Y = X W whose input X has outlier channels O computes (X * mask) W_R + X[..., O] W[O, :]:
    mask zeroes O and W_R is W with rows O zeroed. The first product is what the quantiser
    sees (its range no longer stretched by a few channels); the second, |O| channels wide,
    stays fp32. Exact in fp32. O: channels whose largest |x| over `feeds` (model inputs, one
    sentence each) exceeds `ratio` x the median channel's; an input is split only where that
    shrinks its range `shrink` times or more, since each split adds a few small ops.
    Returns the names of the fp32 MatMuls, which the quantiser must leave alone, and a summary."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    consumers = {}
    for n in model.graph.node:
        if n.op_type == "MatMul" and n.input[1] in inits:
            consumers.setdefault(n.input[0], []).append(n)

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    for x in consumers:
        if x not in outputs:
            probe.graph.output.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, None))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    del probe
    wanted = list(consumers)
    largest = {}
    for feed in feeds:
        for x, o in zip(wanted, sess.run(wanted, feed)):
            a = np.abs(o).reshape(-1, o.shape[-1]).max(0)
            largest[x] = np.maximum(largest[x], a) if x in largest else a
    del sess

    users = {}
    for u in model.graph.node:
        for i in u.input:
            users.setdefault(i, []).append(u)
    inserts, fp32_matmuls, channels, split_inputs = [], [], 0, 0
    for x, nodes in consumers.items():
        a = largest[x]
        outliers = np.flatnonzero(a > ratio * np.median(a))
        if len(outliers) == 0 or a.max() < shrink * np.delete(a, outliers).max():
            continue
        channels += len(outliers)
        split_inputs += 1
        idx, mask = x + "/outlier_channels", x + "/outlier_mask"
        keep = np.ones_like(a, dtype=np.float32)
        keep[outliers] = 0
        model.graph.initializer.extend([numpy_helper.from_array(outliers.astype(np.int64), idx),
                                        numpy_helper.from_array(keep, mask)])
        xo, xr = x + "/outliers", x + "/inliers"
        inserts.append((nodes[0], 0, [helper.make_node("Gather", [x, idx], [xo], name=xo, axis=-1),
                                      helper.make_node("Mul", [x, mask], [xr], name=xr)]))
        for n in nodes:
            w = numpy_helper.to_array(inits[n.input[1]])
            w_outliers = n.input[1] + "/outlier_rows"
            model.graph.initializer.append(numpy_helper.from_array(w[outliers].astype(np.float32), w_outliers))
            w_inliers = w.copy()
            w_inliers[outliers] = 0
            inits[n.input[1]].CopyFrom(numpy_helper.from_array(w_inliers.astype(np.float32), n.input[1]))
            n.input[0] = xr
            # The fp32 part joins after the bias Add, so that ONNX Runtime still fuses the
            # quantised MatMul with its bias.
            after = n
            bias = users.get(n.output[0], [])
            if len(bias) == 1 and bias[0].op_type == "Add" and any(i in inits for i in bias[0].input):
                after = bias[0]
            y = after.output[0]
            after.output[0] = y + "/inliers"
            small = n.name + "/outliers_fp32"
            fp32_matmuls.append(small)
            inserts.append((after, 1, [helper.make_node("MatMul", [xo, w_outliers], [y + "/outliers"], name=small),
                                       helper.make_node("Add", [y + "/inliers", y + "/outliers"], [y],
                                                        name=n.name + "/outliers_add")]))
    order = list(model.graph.node)
    for anchor, offset, new in inserts:  # keeps the node list topologically sorted
        i = order.index(anchor) + offset
        order[i:i] = new
    del model.graph.node[:]
    model.graph.node.extend(order)
    return fp32_matmuls, {"inputs_split": split_inputs, "channels": channels, "sentences": len(feeds)}


def pooled_outputs(path: Path, feeds) -> list:
    """The graph's first output for each feed (one sentence), mean-pooled over tokens."""
    import numpy as np
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = (np.asarray(session.run(None, feed)[0][0], np.float64) for feed in feeds)
    return [x.mean(0) if x.ndim == 2 else x for x in outputs]


def relative_error(reference: list, got: list) -> float:
    """Mean relative L2 distance of `got` from `reference` (pooled outputs, pairwise)."""
    import numpy as np
    return float(np.mean([np.linalg.norm(g - r) / max(np.linalg.norm(r), 1e-12) for g, r in zip(got, reference)]))


def quantise_int8(fp32_path: Path, int8_path: Path, feeds) -> dict:
    """model.int8.onnx, quantised as INT8_QUANTISATION says. Where plain quantisation moves the
    pooled output on `feeds` by more than PLAIN_INT8_MAX_ERROR, outlier channels (found on
    `feeds`) are split off first; the summary says which was done and both errors."""
    import onnx
    from onnxruntime.quantization import quantize_dynamic
    quantize_dynamic(str(fp32_path), str(int8_path), **int8_args())
    reference = pooled_outputs(fp32_path, feeds)
    error = lambda: round(relative_error(reference, pooled_outputs(int8_path, feeds)), 4)  # noqa: E731
    summary = {"plain_error": error(), "sentences": len(feeds)}
    if summary["plain_error"] <= PLAIN_INT8_MAX_ERROR:
        print(f"[export] int8: quantised whole (pooled output {100 * summary['plain_error']:.1f}% from fp32's on "
              f"{len(feeds)} calibration sentences)", file=sys.stderr)
        return {**summary, "inputs_split": 0, "channels": 0}
    model = onnx.load(str(fp32_path))
    keep_fp32, split = split_outlier_channels(model, feeds)
    split_path = int8_path.with_name(int8_path.stem + ".split.onnx")
    onnx.save(model, str(split_path))
    del model
    quantize_dynamic(str(split_path), str(int8_path), nodes_to_exclude=keep_fp32, **int8_args())
    split_path.unlink()
    summary.update(inputs_split=split["inputs_split"], channels=split["channels"],
                   split_error=error())
    print(f"[export] int8: {split['channels']} outlier channels of {split['inputs_split']} MatMul inputs kept "
          f"fp32 (pooled output {100 * summary['plain_error']:.1f}% from fp32's quantised whole, "
          f"{100 * summary['split_error']:.1f}% so; {len(feeds)} calibration sentences)", file=sys.stderr)
    return summary


def calibration_texts(path):
    """The first CALIBRATION_SENTENCES texts of a JSON-lines file ({"text": ...} per line)."""
    with open(path) as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    if not texts:
        sys.exit(f"{path}: no calibration texts")
    return texts[:CALIBRATION_SENTENCES]


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


REFERENCE_TEXTS = ["a gripping, funny film", "dull",
                   "The plot is too slow, but the acting is superb and the ending made me cry."]


def write_torch_reference(model, tokenizer, input_names, max_tokens, dest: Path) -> Path:
    """PyTorch's last hidden states of REFERENCE_TEXTS, one text at a time (no padding)."""
    import torch
    texts = []
    for text in REFERENCE_TEXTS:
        enc = tokenizer([text], truncation=True, max_length=max_tokens, return_tensors="pt")
        with torch.no_grad():
            out = model(**{n: enc[n] for n in input_names})[0][0]
        texts.append({"text": text, "ids": enc["input_ids"][0].tolist(),
                      "last_hidden_state": [[round(float(v), 6) for v in row] for row in out]})
    atomic_json(dest, {"source": "transformers, PyTorch, fp32", "texts": texts})
    return dest


def export(source: str, out: Path, name: str, task: str, int8: bool, fused: bool, opset: int,
           source_info: dict, layers: bool = True, torch_reference: bool = False,
           calibration: list = None) -> dict:
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
                if layer_outputs:
                    result = self.inner(**kwargs, output_hidden_states=True)
                    # hidden_states[-1] is last_hidden_state: not exported twice.
                    return (result.last_hidden_state, *result.hidden_states[:-1])
                result = self.inner(**kwargs)
                return result[0]

        layer_outputs = []
        if task == "feature-extraction" and layers:
            with torch.no_grad():
                probe = model(**{n: sample[n] for n in input_names}, output_hidden_states=True)
            layer_outputs = [f"hidden_state_{i}" for i in range(len(probe.hidden_states) - 1)]
        # export() restores the wrapper's train/eval mode afterwards, recursively:
        # a wrapper left in training mode would switch dropout on in the model.
        wrapped = Wrapper(model).eval()
        with torch.no_grad():
            result = wrapped(*args)
            want_all = [t.numpy() for t in result] if layer_outputs else [result.numpy()]
            want = want_all[0]

        dynamic = {n: {0: "batch", 1: "sequence"} for n in input_names}
        dynamic[output_name] = {0: "batch", 1: "sequence"} if output_name == "last_hidden_state" else {0: "batch"}
        for layer_output in layer_outputs:
            dynamic[layer_output] = {0: "batch", 1: "sequence"}
        fp32_tmp = tmp / "model.onnx"
        with torch.no_grad():
            torch.onnx.export(wrapped, args, str(fp32_tmp), input_names=input_names,
                              output_names=[output_name, *layer_outputs], dynamic_axes=dynamic,
                              opset_version=opset, do_constant_folding=True, dynamo=False)

        import onnx
        onnx.checker.check_model(str(fp32_tmp))

        # Check the export against PyTorch on the masked-in positions.
        import numpy as np
        import onnxruntime as ort
        sess = ort.InferenceSession(str(fp32_tmp), providers=["CPUExecutionProvider"])
        got_all = sess.run([output_name, *layer_outputs],
                           {n: sample[n].numpy().astype(np.int64) for n in input_names})
        if output_name == "last_hidden_state":
            mask = sample["attention_mask"].numpy().astype(bool)
            diff = max(float(np.abs(g[mask] - w[mask]).max()) for g, w in zip(got_all, want_all))
        else:
            diff = float(np.abs(got_all[0] - want).max())
        print(f"[export] onnx vs torch max abs diff on real tokens: {diff:.2e}", file=sys.stderr)
        if diff > 1e-3:
            sys.exit(f"exported graph disagrees with PyTorch (max abs diff {diff})")

        # Measured (Python onnxruntime, MiniLM, batches of 32 Rotten Tomatoes
        # sentences, 10 interleaved rounds): asking this graph for
        # last_hidden_state alone ran at 1.003x the speed of the same graph with
        # the extra outputs removed, so one graph serves both.
        files = {"model.onnx": fp32_tmp}
        int8_summary = None
        if int8:
            int8_tmp = tmp / "model.int8.onnx"
            # One sentence per feed, as the service runs this graph (one sequence per call).
            feeds = [{n: t.numpy().astype(np.int64) for n, t in tokenizer(
                [text], truncation=True, max_length=max_tokens, return_tensors="pt").items() if n in input_names}
                for text in (calibration or REFERENCE_TEXTS)]
            int8_summary = quantise_int8(fp32_tmp, int8_tmp, feeds)
            files["model.int8.onnx"] = int8_tmp
        if fused:
            opt_tmp = tmp / "model.opt.onnx"
            if fuse(fp32_tmp, opt_tmp, config):
                files["model.opt.onnx"] = opt_tmp

        if torch_reference and output_name == "last_hidden_state":
            files["torch_reference.json"] = write_torch_reference(model, tokenizer, input_names, max_tokens,
                                                                  tmp / "torch_reference.json")
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
        # Transformer layers; hidden states 0 (embeddings) .. layers (= last_hidden_state).
        "layers": len(layer_outputs) or None,
        "pad_token_id": int(getattr(config, "pad_token_id", None) or 0),
        "max_tokens": max_tokens,
        "inputs": input_names,
        "outputs": [output_name],
        # Extra outputs of the *.layers.onnx graphs: hidden states 0 .. layers - 1.
        "layer_outputs": layer_outputs,
        "source": source_info,
        "exported_with": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnxruntime": ort.__version__,
            "opset": opset,
        },
        # How model.int8.onnx was quantised (scripts/fetch-model.sh redoes
        # exports made another way).
        "int8_quantisation": {**INT8_QUANTISATION, "outlier_channels": {
            **INT8_QUANTISATION["outlier_channels"], **int8_summary}} if int8 else None,
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
    default_calibration = Path(__file__).resolve().parent.parent / "data" / "rotten_tomatoes" / "train.jsonl"
    p.add_argument("--calibration-texts", type=Path,
                   default=default_calibration if default_calibration.exists() else None,
                   help="JSON lines with a \"text\" field: the int8 graph's outlier channels are found on the "
                        f"first {CALIBRATION_SENTENCES} (default: the data set's training split when set up, "
                        "else a few built-in sentences)")
    p.add_argument("--no-fused", action="store_true", help="skip the offline-fused fp32 copy")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--no-layers", action="store_true",
                   help="export only last_hidden_state, not every layer's hidden states")
    p.add_argument("--torch-reference", action="store_true",
                   help="also write torch_reference.json (PyTorch outputs of a few texts, for tests)")
    p.add_argument("--source-info", default=None,
                   help="JSON object recorded as the manifest's source (default: {\"model\": SOURCE})")
    a = p.parse_args()
    info = json.loads(a.source_info) if a.source_info else {"model": a.source}
    m = export(a.source, a.out, a.name or a.out.name, a.task, not a.no_int8, not a.no_fused, a.opset, info,
               layers=not a.no_layers, torch_reference=a.torch_reference,
               calibration=calibration_texts(a.calibration_texts) if a.calibration_texts else None)
    print(json.dumps({"name": m["name"], "hidden_size": m["hidden_size"], "inputs": m["inputs"],
                      "files": {k: v["bytes"] for k, v in m["files"].items()}}), file=sys.stderr)


if __name__ == "__main__":
    main()
