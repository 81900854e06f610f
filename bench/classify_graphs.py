"""/classify on the heads' own graph (classify.model_file, e.g. the int8
export) against /classify on the fp32 graph, same binary, same run; /embed in
both (it stays on model.file), the default head's accuracy on each graph, and
the memory the second runtime costs.

  python3 bench/classify_graphs.py [--bin target/release/distilserve]
      [--model-dir models/all-minilm-l6-v2 ...] [--graph model.int8.onnx ...]
      [--seconds 15] [--clients 32]

For each model folder: a copy of models/heads (so that a head missing for a
graph is trained into the copy, at startup, as a deployment would), then the
service with `classify.model_file` empty (fp32 for both routes) and with
each `--graph`; each measured with `--clients` closed-loop clients sending one
Rotten Tomatoes test sentence per request to /classify, then to /embed (mean
pooling), after a 3 s warm-up. Idle RSS is read once ready (a restart after
any training), peak RSS (VmHWM) at the end.
"""
import argparse, json, shutil, sys, tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import closed_loop, cpu_name, get_json, rss_mib, start, stop  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=str(ROOT / "target/release/distilserve"))
    p.add_argument("--model-dir", action="append", default=None)
    p.add_argument("--graph", action="append", default=None, help="repeatable; default model.int8.onnx")
    p.add_argument("--heads-from", default=str(ROOT / "models/heads"), help="heads folder copied for each model")
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--clients", type=int, default=32)
    a = p.parse_args()
    sentences = [json.loads(l)["text"] for l in open(ROOT / "data/rotten_tomatoes/test.jsonl")]
    print(f"CPU: {cpu_name()}; {a.clients} clients, {a.seconds:.0f} s per route", flush=True)
    rows = []
    for model_dir in a.model_dir or [str(ROOT / "models/all-minilm-l6-v2")]:
        heads = Path(tempfile.mkdtemp(prefix="bench-heads-"))
        shutil.copytree(a.heads_from, heads, dirs_exist_ok=True)
        for graph in [""] + (a.graph or ["model.int8.onnx"]):
            args = (a.bin, model_dir, "--heads-dir", str(heads), "--classify-model-file", graph)
            # The first start trains the head for this graph where it is missing;
            # measured is a second start, which serves it from disk (the memory
            # figures are then serving's, not training's).
            stop(start(*args, heads="sentiment", log_name="classify-graphs", ready_s=1800)[0])
            proc, port = start(*args, heads="sentiment", log_name="classify-graphs", ready_s=120)
            try:
                idle = rss_mib(proc.pid, "VmRSS")
                head = next(h for h in get_json(port, "/heads")["heads"] if h["name"] == "sentiment")
                row = {"model": Path(model_dir).name, "heads_graph": head.get("graph"), "idle_rss_mib": idle,
                       "test_accuracy": head.get("test_accuracy")}
                for route, body in [("/classify", lambda i: {"inputs": [sentences[i % len(sentences)]]}),
                                    ("/embed", lambda i: {"inputs": [sentences[i % len(sentences)]], "pooling": "mean"})]:
                    closed_loop(port, route, body, a.clients, 3)
                    row[route] = closed_loop(port, route, body, a.clients, a.seconds)
                row["peak_rss_mib"] = rss_mib(proc.pid)
                print(json.dumps(row), flush=True)
                rows.append(row)
            finally:
                stop(proc)
        shutil.rmtree(heads, ignore_errors=True)
    print()
    print("| model | heads' graph | /classify c=%d: per s (p50 / p99 ms) | /embed c=%d | head test accuracy | idle / peak RSS |" % (a.clients, a.clients))
    print("|---|---|---|---|---|---|")
    for r in rows:
        c, e = r["/classify"], r["/embed"]
        print(f"| {r['model']} | {r['heads_graph']} | {c['per_s']:,.0f} ({c['p50_ms']} / {c['p99_ms']}) | "
              f"{e['per_s']:,.0f} ({e['p50_ms']} / {e['p99_ms']}) | {r['test_accuracy']:.4f} | {r['idle_rss_mib']} / {r['peak_rss_mib']} MiB |")
    fp32_rows = {r["model"]: r for r in rows if r["heads_graph"] == "model.onnx"}
    for other in (r for r in rows if r["heads_graph"] != "model.onnx"):
        fp32 = fp32_rows[other["model"]]
        print(f"{other['heads_graph']}: "f"{fp32['model']}: /classify {other['/classify']['per_s'] / fp32['/classify']['per_s']:.2f}x, "
              f"/embed {other['/embed']['per_s'] / fp32['/embed']['per_s']:.2f}x, "
              f"accuracy {100 * (other['test_accuracy'] - fp32['test_accuracy']):+.2f} points, "
              f"idle RSS +{other['idle_rss_mib'] - fp32['idle_rss_mib']} MiB")


if __name__ == "__main__":
    main()
