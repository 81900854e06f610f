#!/usr/bin/env python3
"""Bring your own labels, measured: a 3-class head trained through the API on
about 2,000 labelled sentences of a data set the project has never used, while
a client sends single sentences at a steady rate.

The data: Amazon product-review snippets with mean human ratings (-4..4) from
the same vaderSentiment 3.3.2 source distribution that holds the Rotten
Tomatoes sentences (additional_resources/hutto_ICWSM_2014.tar.gz,
amazonReviewSnippets_GroundTruth.txt; Hutto & Gilbert 2014). Labels: rating
<= -1 negative, >= 1 positive, else neutral; 2,000 sentences drawn with seed 0.

It starts the release binary on the default model with an empty heads folder
and an admin key, then:
  1. idle: single-sentence /embed at RATE requests/s (open loop) for IDLE_S;
  2. uploads the CSV (POST /heads), and keeps the same single-sentence load
     going until the head is ready: time from upload to ready, p50/p99 of the
     single sentences during training, every status;
  3. classifies with the new head, and prints its held-out metrics.

    python3 bench/heads_api.py --bin target/release/distilserve   (make bench-heads)
"""

import argparse
import csv
import io
import json
import os
import random
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request

ADMIN = "bench-admin-key"


def reviews(cache):
    sdist = os.path.join(cache, "downloads", "vaderSentiment-3.3.2.tar.gz")
    if not os.path.isfile(sdist):
        sys.exit(f"{sdist} is missing: run scripts/setup.sh (it fetches the data set from it)")
    with tarfile.open(sdist) as outer:
        inner = outer.extractfile("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz").read()
    with tarfile.open(fileobj=io.BytesIO(inner)) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("amazonReviewSnippets_GroundTruth.txt"))
        text = tar.extractfile(member).read().decode("utf-8", errors="replace")
    rows = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or not parts[2].strip():
            continue
        rating = float(parts[1])
        label = "negative" if rating <= -1 else "positive" if rating >= 1 else "neutral"
        rows.append((parts[2].strip(), label))
    return rows


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url, body=None, headers=None, method=None, timeout=30):
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    if data is not None and "Content-Type" not in (headers or {}):
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


class SteadyLoad:
    """Single-sentence /embed at a fixed rate, each request on its own thread
    (open loop: a slow answer does not delay the next request)."""

    def __init__(self, base, rate):
        self.base, self.rate = base, rate
        self.results = []  # (sent at, status, ms)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def one(self, i, sent):
        body = {"inputs": f"single sentence number {i}: the battery lasts all day", "pooling": "mean"}
        try:
            status, _, _ = request(self.base + "/embed", body, timeout=30)
        except Exception:  # noqa: BLE001 - any failure counts as one
            status = 0
        with self.lock:
            self.results.append((sent, status, (time.perf_counter() - sent) * 1e3))

    def run(self):
        start, i = time.perf_counter(), 0
        while not self.stop.is_set():
            due = start + i / self.rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            threading.Thread(target=self.one, args=(i, time.perf_counter()), daemon=True).start()
            i += 1

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        time.sleep(1.0)  # let the last requests finish

    def summary(self):
        with self.lock:
            ms = sorted(r[2] for r in self.results)
            statuses = {}
            for r in self.results:
                statuses[r[1]] = statuses.get(r[1], 0) + 1
        pick = lambda q: ms[min(len(ms) - 1, int(round((len(ms) - 1) * q)))]  # noqa: E731
        return {"requests": len(ms), "statuses": statuses, "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": ms[-1]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", default="target/release/distilserve")
    parser.add_argument("--model-dir", default="models/all-minilm-l6-v2")
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=10.0, help="single sentences per second")
    parser.add_argument("--idle-seconds", type=float, default=15.0)
    parser.add_argument("--cache", default=os.environ.get("DISTILSERVE_CACHE", os.path.expanduser("~/.cache/distilserve")))
    args = parser.parse_args()

    rows = reviews(args.cache)
    random.Random(0).shuffle(rows)
    rows = rows[: args.examples]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["text", "label"])
    writer.writerows(rows)
    upload = buffer.getvalue().encode()
    counts = {}
    for _, label in rows:
        counts[label] = counts.get(label, 0) + 1

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"CPU: {cpu}, {os.cpu_count()} cores; {len(rows)} Amazon review sentences {counts}, {len(upload)} bytes of CSV")

    heads = tempfile.mkdtemp(prefix="bench-heads-")
    config = os.path.join(heads, "bench.toml")
    with open(config, "w") as f:
        f.write(f'[classify]\nserve = []\ndefault_head = ""\nheads_dir = "{heads}/heads"\n')
    port = free_port()
    env = dict(os.environ, DISTILSERVE_SECURITY__ADMIN_KEY=ADMIN)
    log = open(os.path.join(heads, "server.log"), "w")
    server = subprocess.Popen(
        [args.bin, "serve", "--config", config, "--model-dir", args.model_dir, "--port", str(port), "--host", "127.0.0.1"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if request(base + "/health", timeout=1)[0] == 200:
                    break
            except Exception:  # noqa: BLE001
                pass
            time.sleep(0.1)
        else:
            sys.exit("the server did not become ready; see " + log.name)
        for _ in range(20):  # first-call allocations out of the way
            request(base + "/embed", {"inputs": "warm up", "pooling": "mean"})

        with SteadyLoad(base, args.rate) as idle:
            time.sleep(args.idle_seconds)
        idle = idle.summary()

        with SteadyLoad(base, args.rate) as during:
            time.sleep(1.0)
            uploaded = time.perf_counter()
            status, body, headers = request(
                base + "/heads?name=amazon-reviews",
                upload,
                headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "text/csv"},
                method="POST",
            )
            if status != 202:
                sys.exit(f"upload answered {status}: {body[:300]}")
            phases = []
            while True:
                status, body, _ = request(base + "/heads/amazon-reviews")
                detail = json.loads(body)
                phase = detail.get("job", {}).get("phase") or detail["status"]
                if not phases or phases[-1][0] != phase:
                    phases.append((phase, time.perf_counter() - uploaded))
                if detail["status"] in ("ready", "failed"):
                    break
                time.sleep(0.1)
            ready_s = time.perf_counter() - uploaded
            time.sleep(1.0)
        during = during.summary()
        if detail["status"] != "ready":
            sys.exit(f"training failed: {detail['job']['error']}")

        status, body, headers = request(base + "/classify", {"inputs": ["it broke after two days", "works as described"], "head": "amazon-reviews"})
        assert status == 200, body
        test = detail["metrics"]["test"]
        print(f"upload to ready: {ready_s:.1f} s (phases, s after upload: "
              + ", ".join(f"{p} {t:.1f}" for p, t in phases) + ")")
        print(f"head: pooling {detail['pooling']}, alpha {detail['training']['alpha']}, "
              f"CV accuracy {detail['training']['held_out_accuracy']:.3f}, "
              f"held-out ({detail['job']['test_source']}) accuracy {test['accuracy']:.3f}, macro-F1 {test['macro_f1']:.3f} "
              f"on {test['examples']} sentences; per label F1 "
              + ", ".join(f"{c['label']} {c['f1']:.3f}" for c in test["per_class"]))
        print(f"single-sentence /embed at {args.rate:g}/s, idle: {idle['requests']} requests {idle['statuses']}, "
              f"p50 {idle['p50_ms']:.1f} ms, p99 {idle['p99_ms']:.1f} ms, max {idle['max_ms']:.1f} ms")
        print(f"single-sentence /embed at {args.rate:g}/s, during training: {during['requests']} requests {during['statuses']}, "
              f"p50 {during['p50_ms']:.1f} ms, p99 {during['p99_ms']:.1f} ms, max {during['max_ms']:.1f} ms")
        print("classify:", json.loads(body)["predictions"][0]["label"], "/", json.loads(body)["predictions"][1]["label"],
              "version", headers.get("x-head-version"))
        ok = ready_s <= 60 and during["p99_ms"] <= 500 and set(during["statuses"]) == {200}
        print("targets (ready within 60 s, p99 <= 500 ms during training, all 200):", "met" if ok else "MISSED")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
