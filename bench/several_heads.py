#!/usr/bin/env python3
"""Several heads from one encoder pass: /classify with `heads` (3 heads) against
one head, and against 3 separate requests, on the default model.

Starts the release binary with the default head (sentiment, trained if
missing) and trains two more heads over the API from 300 validation sentences
(pooling mean and cls), then times ROUNDS sequential requests of 16 Rotten
Tomatoes test sentences each way, interleaved, and prints medians.

    python3 bench/several_heads.py --bin target/release/distilserve
"""
import argparse, json, os, socket, statistics, subprocess, sys, tempfile, time, urllib.request

ADMIN = "bench-admin"


def call(url, body=None, headers=None, method=None):
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, headers=headers or {"Content-Type": "application/json"}, method=method)
    with urllib.request.urlopen(req, timeout=300) as r:
        return r.status, json.loads(r.read() or b"null")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default="target/release/distilserve")
    p.add_argument("--rounds", type=int, default=200)
    args = p.parse_args()
    rows = [json.loads(l) for l in open("data/rotten_tomatoes/validation.jsonl")]
    names = json.load(open("data/rotten_tomatoes/meta.json"))["labels"]
    examples = [r for r in rows if r["label"] == 0][:150] + [r for r in rows if r["label"] == 1][:150]
    csv_rows = ["text,label"] + ['"%s",%s' % (r["text"].replace('"', '""'), names[r["label"]]) for r in examples]
    tests = [json.loads(l)["text"] for l in open("data/rotten_tomatoes/test.jsonl")][:16]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    heads_dir = tempfile.mkdtemp(prefix="several-heads-")
    if os.path.isfile("models/heads/sentiment.json"):
        import shutil; shutil.copy("models/heads/sentiment.json", heads_dir)
    env = dict(os.environ, DISTILSERVE_SECURITY__ADMIN_KEY=ADMIN, DISTILSERVE_CLASSIFY__HEADS_DIR=heads_dir)
    log = open(os.path.join(heads_dir, "server.log"), "w")
    server = subprocess.Popen([args.bin, "serve", "--port", str(port), "--host", "127.0.0.1"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(3000):
            try:
                if call(base + "/health")[0] == 200: break
            except Exception:
                time.sleep(0.1)
        for name, pooling in [("rt-mean", "mean"), ("rt-cls", "cls")]:
            call(f"{base}/heads?name={name}&pooling={pooling}&replace=true", "\n".join(csv_rows).encode(),
                 {"Content-Type": "text/csv", "Authorization": f"Bearer {ADMIN}"}, "POST")
            while call(f"{base}/heads/{name}")[1].get("status") != "ready": time.sleep(0.2)
        three = ["sentiment", "rt-mean", "rt-cls"]
        ways = {
            "1 head (sentiment)": lambda: call(base + "/classify", {"inputs": tests, "head": "sentiment"}),
            "3 heads, one request (heads)": lambda: call(base + "/classify", {"inputs": tests, "heads": three}),
            "3 heads, three requests": lambda: [call(base + "/classify", {"inputs": tests, "head": h}) for h in three],
        }
        for f in ways.values():
            for _ in range(10): f()
        times = {k: [] for k in ways}
        for _ in range(args.rounds):
            for k, f in ways.items():
                t = time.perf_counter(); f(); times[k].append((time.perf_counter() - t) * 1e3)
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
        print(f"CPU: {cpu}, {os.cpu_count()} cores; 16 sentences per request, {args.rounds} rounds, median (p90) ms:")
        one = statistics.median(times["1 head (sentiment)"])
        for k, v in times.items():
            v.sort()
            print(f"  {k:32s} {statistics.median(v):7.1f} ({v[int(len(v) * 0.9)]:.1f})  x{statistics.median(v) / one:.2f} of one head")
    finally:
        server.terminate(); server.wait(timeout=60)


if __name__ == "__main__":
    main()
