#!/usr/bin/env python3
"""The container against the host binary, in one run (`make bench-container`):
the same source, model, head and settings, once as target/release/distilserve
on the host and once as the image under `--cpus 2 --memory 512m`, each on its
own loopback port. Alternating rounds (host, container, host, container...)
so that a noisy neighbour hurts both alike:

  c=1   sequential /classify requests of one test sentence: p50 and p99 latency
  c=32  32 clients, keep-alive, one sentence each, for SECONDS: sentences/s

Prints a JSON line per round and a Markdown table with the ratios.

  bench/container.py [--image distilserve:latest] [--bin target/release/distilserve] [--rounds 2] [--seconds 10]
"""
import argparse, http.client, json, os, shutil, statistics, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serving  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINE = os.environ.get("CONTAINER_ENGINE") or shutil.which("podman") or shutil.which("docker")
if ENGINE and os.path.basename(ENGINE) == "podman":
    os.environ.setdefault("CONTAINERS_CONF", os.path.join(REPO, "deploy/podman/containers.conf"))


def classify(conn, text):
    body = json.dumps({"inputs": text})
    conn.request("POST", "/classify", body, {"content-type": "application/json"})
    r = conn.getresponse()
    r.read()
    if r.status != 200:
        raise RuntimeError(f"status {r.status}")


def latency(port, texts, n):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for t in texts[:20]:
        classify(conn, t)  # warm
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        classify(conn, texts[i % len(texts)])
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.99)]


def throughput(port, texts, clients, seconds):
    done, errors = [0] * clients, [0] * clients
    stop = time.time() + seconds

    def client(w):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        i = w
        while time.time() < stop:
            try:
                classify(conn, texts[i % len(texts)])
                done[w] += 1
            except Exception:
                errors[w] += 1
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            i += clients

    threads = [threading.Thread(target=client, args=(w,)) for w in range(clients)]
    start = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.time() - start), sum(errors)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", default="distilserve:latest")
    ap.add_argument("--bin", default="target/release/distilserve")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--requests", type=int, default=300, help="c=1 requests per round")
    a = ap.parse_args()
    if not ENGINE:
        sys.exit("no container engine (podman or docker)")
    texts = [json.loads(l)["text"] for l in open(os.path.join(REPO, "data/rotten_tomatoes/test.jsonl"))]

    # The image's own head, so that both serve the same one.
    heads = tempfile.mkdtemp(prefix="bench-container-heads-")
    with open(os.path.join(heads, "sentiment.json"), "wb") as f:
        subprocess.run([ENGINE, "run", "--rm", "--entrypoint", "cat", a.image, "/app/models/heads/sentiment.json"],
                       stdout=f, check=True)

    host_port, box_port = serving.free_port(), serving.free_port()
    log = open(f"/tmp/bench-container-host-{host_port}.log", "w")
    host = subprocess.Popen([a.bin, "serve", "--host", "127.0.0.1", "--port", str(host_port), "--heads-dir", heads,
                             "--intra-threads", "2"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    box = "bench-container"
    subprocess.run([ENGINE, "rm", "-f", box], capture_output=True)
    subprocess.run([ENGINE, "run", "-d", "--name", box, "--cpus", "2", "--memory", "512m", "--read-only",
                    "-e", "DISTILSERVE_MODEL__INTRA_THREADS=2", "-p", f"127.0.0.1:{box_port}:8080", a.image],
                   check=True, capture_output=True)
    rows = []
    try:
        for port in (host_port, box_port):
            if not serving.wait_ready(port, 120):
                raise RuntimeError(f"nothing ready on {port}")
        for r in range(a.rounds):
            for where, port in [("host", host_port), ("container", box_port)]:
                p50, p99 = latency(port, texts, a.requests)
                rate, errors = throughput(port, texts, 32, a.seconds)
                row = {"round": r + 1, "where": where, "c1_p50_ms": round(p50, 2), "c1_p99_ms": round(p99, 2),
                       "c32_sentences_per_s": round(rate, 1), "errors": errors}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        host.terminate()
        host.wait(30)
        subprocess.run([ENGINE, "rm", "-f", "-t", "5", box], capture_output=True)
        shutil.rmtree(heads, ignore_errors=True)

    cpu = serving.cpu_name()
    mean = lambda where, k: statistics.mean(r[k] for r in rows if r["where"] == where)
    print(f"| {cpu}, {a.rounds} alternating rounds | host | container | container / host |")
    print("|---|---|---|---|")
    for k, label in [("c1_p50_ms", "c=1 p50 ms"), ("c1_p99_ms", "c=1 p99 ms"), ("c32_sentences_per_s", "c=32 sentences/s")]:
        h, c = mean("host", k), mean("container", k)
        print(f"| {label} | {h:.2f} | {c:.2f} | {c / h:.3f} |")


if __name__ == "__main__":
    main()
