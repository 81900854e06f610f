#!/usr/bin/env python3
"""How far the encoder runs from this CPU's peak (`make bench-flops`; BENCHMARKS.md).

For each model folder given: its operations per token from config.json (per
layer, 2 x (4 d^2 + 2 d i) multiply-adds counted as two operations each for
the Q, K, V, output and feed-forward matrices, plus 4 n d for attention's
scores and weighted sum at n tokens), then the tokens/s ONNX Runtime reaches
on each of its graphs (model.onnx fp32, model.opt.onnx fused, model.int8.onnx)
for batches of --batch sequences of --tokens tokens with --threads threads:
achieved GOP/s. The CPU's practical peak, measured the same way: one large
matrix product in ONNX Runtime's own kernels, fp32 (`MatMul`) and int8
(`MatMulInteger`, what its int8 graphs run), with the same threads.
Prints one JSON object.

    $(scripts/python-env.sh) bench/flops.py models/all-minilm-l6-v2 models/all-mpnet-base-v2
"""
import argparse, json, os, time
from pathlib import Path


def ops_per_token(config, n):
    # DistilBERT's configuration names them dim, hidden_dim and n_layers.
    d = config.get("hidden_size") or config["dim"]
    i = config.get("intermediate_size") or config["hidden_dim"]
    layers = config.get("num_hidden_layers") or config["n_layers"]
    return layers * (2 * (4 * d * d + 2 * d * i) + 4 * n * d)


def timed(run, seconds):
    run()  # warm up
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run(); runs += 1
    return runs / (time.perf_counter() - start)


def session(path, threads):
    import onnxruntime as ort
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def encoder_rate(path, batch, tokens, threads, seconds):
    import numpy as np
    s = session(path, threads)
    names = [i.name for i in s.get_inputs()]
    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(1000, 2000, (batch, tokens), dtype=np.int64),
            "attention_mask": np.ones((batch, tokens), dtype=np.int64),
            "token_type_ids": np.zeros((batch, tokens), dtype=np.int64)}
    feed = {k: v for k, v in feed.items() if k in names}
    out = [s.get_outputs()[0].name]  # the last hidden state alone
    return timed(lambda: s.run(out, feed), seconds) * batch * tokens


def matmul_peak(kind, threads, size, seconds, tmp):
    """Operations/s of one size x size matrix product in ONNX Runtime's own
    kernels (MLAS): fp32 `MatMul`, or int8 `MatMulInteger` (what its int8 graphs run)."""
    import numpy as np
    from onnx import TensorProto, helper, save
    rng = np.random.default_rng(0)
    if kind == "fp32":
        a_type, b_type, y_type, op = TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.FLOAT, "MatMul"
        a = rng.standard_normal((size, size), dtype=np.float32)
        b = rng.standard_normal(size * size, dtype=np.float32).tobytes()
    else:
        a_type, b_type, y_type, op = TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32, "MatMulInteger"
        a = rng.integers(0, 255, (size, size), dtype=np.uint8)
        b = rng.integers(-128, 127, size * size, dtype=np.int8).tobytes()
    graph = helper.make_graph(
        [helper.make_node(op, ["a", "b"], ["y"])], "probe",
        [helper.make_tensor_value_info("a", a_type, [size, size])],
        [helper.make_tensor_value_info("y", y_type, [size, size])],
        [helper.make_tensor("b", b_type, [size, size], b, raw=True)])
    path = Path(tmp) / f"{kind}-probe.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    s = session(path, threads)
    return timed(lambda: s.run(None, {"a": a}), seconds) * 2 * size ** 3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--size", type=int, default=2048)
    a = ap.parse_args()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    flags = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "")
    out = {"cpu": cpu, "threads": a.threads, "avx512f": " avx512f" in flags, "avx512_vnni": "avx512_vnni" in flags,
           "batch": a.batch, "tokens": a.tokens,
           "peak_gops": {kind: round(matmul_peak(kind, a.threads, a.size, a.seconds, "/tmp") / 1e9, 1)
                         for kind in ("fp32", "int8")},
           "models": {}}
    for m in a.models:
        config = json.load(open(Path(m) / "config.json"))
        per_token = ops_per_token(config, a.tokens)
        graphs = {}
        for name, file in [("fp32", "model.onnx"), ("fused", "model.opt.onnx"), ("int8", "model.int8.onnx")]:
            if (Path(m) / file).exists():
                rate = encoder_rate(Path(m) / file, a.batch, a.tokens, a.threads, a.seconds)
                graphs[name] = {"tokens_per_s": round(rate), "gops": round(rate * per_token / 1e9, 1)}
        out["models"][m] = {"mops_per_token": round(per_token / 1e6, 1), "graphs": graphs}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
