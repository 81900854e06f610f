"""/embed throughput of one binary on one model, CPU or CUDA execution provider,
as bench/gpu/run.sh runs it on the GPU machine (one JSON line per load):

  python3 bench/gpu/load.py BINARY MODEL_DIR cpu|cuda ORT_LIBRARY SENTENCES_JSON [--parity FILE]

LOADS ("1x1,32x1,8x16"), LOAD_SECONDS (10) and VARIANT (a label for settings
given as DISTILSERVE_* variables) shape the run. Loads (closed loop, keep-alive, one connection per client, mean pooling as
/classify's encoder work): one sentence per request at concurrency 1 and 32,
16 sentences per request at concurrency 8. --parity writes FILE (the first
run: the CPU) or compares against it the per-token hidden states of 16 sentences.
"""
import http.client, json, os, subprocess, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from serving import closed_loop, cpu_name, rss_mib, start, stop  # noqa: E402

SECONDS = float(os.environ.get("LOAD_SECONDS", "10"))
# "clients x sentences per request", comma-separated.
LOADS = [tuple(int(n) for n in l.split("x")) for l in os.environ.get("LOADS", "1x1,32x1,8x16").split(",")]
# A label for settings passed to the server through DISTILSERVE_* variables.
VARIANT = os.environ.get("VARIANT", "default")


def post(conn, body):
    conn.request("POST", "/embed", body, {"content-type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        raise RuntimeError(f"{r.status}: {data[:200]!r}")
    return data


def load(port, sentences, clients, per_request, seconds):
    """Closed loop (bench/serving.py) of `per_request` sentences per request."""
    body = lambda i: {"inputs": [sentences[(i * per_request + j) % len(sentences)] for j in range(per_request)],
                      "pooling": "mean"}
    row = closed_loop(port, "/embed", body, clients, seconds)
    return {"clients": clients, "per_request": per_request, "sentences_per_s": round(row["per_s"] * per_request, 1),
            "p50_ms": row["p50_ms"], "p99_ms": row["p99_ms"], "errors": row["errors"]}


def gpu_memory_mib(pid):
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
        return sum(int(l.split(",")[1]) for l in out.splitlines() if l.split(",")[0].strip() == str(pid))
    except Exception:
        return None


def main():
    binary, model_dir, provider, ort, sentences_file = sys.argv[1:6]
    parity = sys.argv[sys.argv.index("--parity") + 1] if "--parity" in sys.argv else None
    sentences = json.load(open(sentences_file))
    extra = ["--execution-provider", provider, "--onnxruntime-library", ort]
    if provider == "cuda":
        # A GPU call's fixed cost is worth hundreds of tokens (config/default.toml).
        os.environ["DISTILSERVE_BATCHING__CALL_OVERHEAD_TOKENS"] = "256"
    t = time.time()
    proc, port = start(binary, model_dir, *extra, log_name=f"gpu-{provider}")
    ready_s = round(time.time() - t, 1)
    base = {"model": Path(model_dir).name, "provider": provider, "variant": VARIANT, "ready_s": ready_s,
            "cpu": cpu_name(), "cores": os.cpu_count()}
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        info = json.loads((conn.request("GET", "/info"), conn.getresponse().read())[1])
        base["served_by"] = info.get("model", {}).get("execution_provider", info.get("execution_provider"))
        if parity:
            body = json.dumps({"inputs": sentences[:16], "pooling": "none"}).encode()
            got = json.loads(post(conn, body))
            if not os.path.exists(parity):
                json.dump(got, open(parity, "w"))
            else:
                import numpy as np
                ref = json.load(open(parity))
                diffs = [float(np.max(np.abs(np.array(a["embedding"] if isinstance(a, dict) else a) -
                                             np.array(b["embedding"] if isinstance(b, dict) else b))))
                         for a, b in zip(ref["embeddings"], got["embeddings"])]
                base["max_abs_diff_vs_cpu"] = max(diffs)
        for clients, per_request in LOADS:
            load(port, sentences, clients, per_request, 2)  # warm-up of this shape
            row = dict(base, **load(port, sentences, clients, per_request, SECONDS))
            row["rss_peak_mib"] = rss_mib(proc.pid)
            row["gpu_mib"] = gpu_memory_mib(proc.pid) if provider == "cuda" else None
            print(json.dumps(row), flush=True)
    finally:
        stop(proc)
        print(open(f"/tmp/gpu-{provider}-{port}.log").read()[-1500:] if provider == "cuda" else "", file=sys.stderr)


if __name__ == "__main__":
    main()
