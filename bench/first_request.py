#!/usr/bin/env python3
"""First-request latency of a fresh process, with and without the warm-up
(model.warm_up): start the release binary, wait until /health/ready answers
200, then time the first single-sentence /embed and /classify, and a later
one of each. Repeated RUNS times each way, interleaved; medians printed.

    python3 bench/first_request.py --bin target/release/distilserve
"""
import argparse, json, os, socket, statistics, subprocess, tempfile, time, urllib.request


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()
        assert r.status == 200
    return (time.perf_counter() - t) * 1e3


def one_run(binary, warm_up, heads_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    env = dict(os.environ, DISTILSERVE_CLASSIFY__HEADS_DIR=heads_dir)
    started = time.perf_counter()
    server = subprocess.Popen([binary, "serve", "--port", str(port), "--host", "127.0.0.1", "--warm-up", warm_up],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                with urllib.request.urlopen(base + "/health/ready", timeout=1) as r:
                    if r.status == 200: break
            except Exception:
                time.sleep(0.01)
        ready = (time.perf_counter() - started) * 1e3
        sentence = {"inputs": "a gripping, funny film", "pooling": "mean"}
        first_embed = post(base + "/embed", sentence)
        first_classify = post(base + "/classify", {"inputs": "a dull, lifeless plot"})
        for _ in range(20):
            post(base + "/embed", sentence)
        later_embed = post(base + "/embed", sentence)
        later_classify = post(base + "/classify", {"inputs": "a dull, lifeless plot"})
        return ready, first_embed, first_classify, later_embed, later_classify
    finally:
        server.terminate(); server.wait(timeout=60)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default="target/release/distilserve")
    p.add_argument("--runs", type=int, default=7)
    args = p.parse_args()
    if not os.path.isfile("models/heads/sentiment.json"):
        raise SystemExit("models/heads/sentiment.json is missing: distilserve train --head sentiment")
    heads_dir = tempfile.mkdtemp(prefix="first-request-")
    import shutil; shutil.copy("models/heads/sentiment.json", heads_dir)
    results = {"false": [], "true": []}
    for _ in range(args.runs):
        for warm in ("false", "true"):
            results[warm].append(one_run(args.bin, warm, heads_dir))
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"CPU: {cpu}, {os.cpu_count()} cores; fp32 MiniLM, {args.runs} fresh processes each way, medians in ms")
    print(f"{'model.warm_up':14s} {'start to ready':>15s} {'first /embed':>13s} {'first /classify':>16s} {'later /embed':>13s} {'later /classify':>16s}")
    for warm, rows in results.items():
        m = [statistics.median(col) for col in zip(*rows)]
        print(f"{warm:14s} {m[0]:15.0f} {m[1]:13.1f} {m[2]:16.1f} {m[3]:13.1f} {m[4]:16.1f}")


if __name__ == "__main__":
    main()
