#!/usr/bin/env python3
"""A first start as a fresh clone has it: the release binary on the default
settings with an empty heads folder and an empty feature cache, so the default
head is trained before the first /classify.

    python3 bench/first_start.py --bin target/release/distilserve   (make bench-first-start)

Prints seconds from the process's start to: the model loaded (its log), /health/ready
200, the first /classify answered, and (where the heads have a graph of their
own) the exact graph's head compared (GET /heads/{name}: no graph `training`),
with the graph served, the reason and the head's test accuracy.
"""
import argparse
import calendar
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, json.loads(r.read() or b"null")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=str(ROOT / "target/release/distilserve"))
    p.add_argument("--head", default="sentiment")
    p.add_argument("--timeout", type=float, default=900)
    a = p.parse_args()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    work = Path(tempfile.mkdtemp(prefix="first-start-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    log = open(work / "log", "w")
    started, started_epoch = time.perf_counter(), time.time()
    server = subprocess.Popen(
        [a.bin, "serve", "--host", "127.0.0.1", "--port", str(port), "--heads-dir", str(work / "heads"),
         "--feature-cache-dir", str(work / "cache"), "--log-format", "json", "--log-filter", "info,ort=warn"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = started + a.timeout
    marks = {}
    try:
        while "ready" not in marks:
            if server.poll() is not None or time.perf_counter() > deadline:
                sys.exit(f"not ready (see {work / 'log'})")
            try:
                if get(base + "/health/ready")[0] == 200:
                    marks["ready"] = time.perf_counter() - started
            except Exception:
                time.sleep(0.1)
        body = json.dumps({"inputs": ["a gorgeous, witty, seductive movie"], "head": a.head}).encode()
        request = urllib.request.Request(base + "/classify", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as r:
            answer = json.loads(r.read())
        marks["first /classify"] = time.perf_counter() - started
        while True:
            _, detail = get(f"{base}/heads/{a.head}")
            phases = [g["phase"] for g in detail.get("graphs", [])]
            if "training" not in phases:
                break
            if time.perf_counter() > deadline:
                sys.exit("the comparison of graphs did not finish")
            time.sleep(0.5)
        if len(phases) > 1:
            marks["graphs compared"] = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait()
        log.close()
    for line in open(work / "log"):
        if '"model loaded"' in line:
            ts = json.loads(line)["timestamp"]  # UTC, e.g. 2026-12-06T00:48:26.956063Z
            at = calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) + float("0" + ts[19:-1])
            marks["model loaded (log)"] = at - started_epoch
    print(f"CPU: {cpu}, {os.cpu_count()} cores; {a.bin}")
    for name, seconds in sorted(marks.items(), key=lambda kv: kv[1]):
        print(f"{name:<22} {seconds:7.1f} s")
    print(f"first answer: {answer['predictions'][0]['label']} ({answer['predictions'][0]['probability']:.3f})")
    print(f"served on {detail.get('graph')}: {detail.get('graph_reason') or '-'}; "
          f"graphs {detail.get('graphs')}; test accuracy {detail.get('test_accuracy')}")


if __name__ == "__main__":
    main()
