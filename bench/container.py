#!/usr/bin/env python3
"""The container against the host binary, in one run (`make bench-container`):
the same source, model, head and settings, once as target/release/distilserve
on the host and once as the image under `--cpus 2 --memory 512m`, each on its
own loopback port; and the image once more with its heads on the exact graph
(`classify.model_file = ""`, one graph: what it served before it shipped the
int8 graph; a head trained for that graph on the host, mounted). Alternating
rounds (host, container, container fp32, host...) so that a noisy neighbour
hurts all alike:

  c=1   sequential /classify requests of one test sentence: p50 and p99 latency
  c=32  32 clients, keep-alive, one sentence each, for SECONDS: sentences/s of
        /classify, then of /embed (mean pooling)
  RSS   the service's VmRSS once ready and its VmHWM at the end

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


def classify(conn, text, route="/classify"):
    body = json.dumps({"inputs": text, **({"pooling": "mean"} if route == "/embed" else {})})
    conn.request("POST", route, body, {"content-type": "application/json"})
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


def throughput(port, texts, clients, seconds, route="/classify"):
    done, errors = [0] * clients, [0] * clients
    stop = time.time() + seconds

    def client(w):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        i = w
        while time.time() < stop:
            try:
                classify(conn, texts[i % len(texts)], route)
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

    # The exact graph's head, trained here on the same data for the fp32 container.
    exact_heads = tempfile.mkdtemp(prefix="bench-container-exact-")
    subprocess.run([a.bin, "train", "--head", "sentiment", "--heads-dir", exact_heads, "--classify-model-file", ""],
                   cwd=REPO, check=True, capture_output=True)
    # Writable by the image's user (uid 10001): the service locks and may write the heads folder.
    for root, _, files in os.walk(exact_heads):
        os.chmod(root, 0o777)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666)

    host_port, box_port, fp32_port = serving.free_port(), serving.free_port(), serving.free_port()
    log = open(f"/tmp/bench-container-host-{host_port}.log", "w")
    host = subprocess.Popen([a.bin, "serve", "--host", "127.0.0.1", "--port", str(host_port), "--heads-dir", heads,
                             "--intra-threads", "2"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    boxes = {"container": (box_port, []), "container fp32": (fp32_port, [
        "-e", "DISTILSERVE_CLASSIFY__MODEL_FILE=", "-v", f"{exact_heads}:/app/models/heads"])}
    for name, (port, extra) in boxes.items():
        box = "bench-" + name.replace(" ", "-")
        subprocess.run([ENGINE, "rm", "-f", box], capture_output=True)
        subprocess.run([ENGINE, "run", "-d", "--name", box, "--cpus", "2", "--memory", "512m", "--read-only",
                        "-e", "DISTILSERVE_MODEL__INTRA_THREADS=2", "-p", f"127.0.0.1:{port}:8080", *extra, a.image],
                       check=True, capture_output=True)

    def rss(where, field):
        if where == "host":
            return serving.rss_mib(host.pid, field)
        box = "bench-" + where.replace(" ", "-")
        status = subprocess.run([ENGINE, "exec", box, "cat", "/proc/1/status"], capture_output=True, text=True).stdout
        return next((int(l.split()[1]) // 1024 for l in status.splitlines() if l.startswith(field + ":")), None)

    targets = [("host", host_port)] + [(name, port) for name, (port, _) in boxes.items()]
    rows, ready_rss = [], {}
    try:
        for where, port in targets:
            if not serving.wait_ready(port, 180):
                raise RuntimeError(f"{where}: nothing ready on {port}")
            ready_rss[where] = rss(where, "VmRSS")
        for r in range(a.rounds):
            for where, port in targets:
                p50, p99 = latency(port, texts, a.requests)
                rate, errors = throughput(port, texts, 32, a.seconds)
                embed_rate, embed_errors = throughput(port, texts, 32, a.seconds, "/embed")
                row = {"round": r + 1, "where": where, "c1_p50_ms": round(p50, 2), "c1_p99_ms": round(p99, 2),
                       "c32_sentences_per_s": round(rate, 1), "embed_c32_sentences_per_s": round(embed_rate, 1),
                       "errors": errors + embed_errors, "ready_rss_mib": ready_rss[where],
                       "peak_rss_mib": rss(where, "VmHWM")}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        host.terminate()
        host.wait(30)
        for name in boxes:
            subprocess.run([ENGINE, "rm", "-f", "-t", "5", "bench-" + name.replace(" ", "-")], capture_output=True)
        shutil.rmtree(heads, ignore_errors=True)
        shutil.rmtree(exact_heads, ignore_errors=True)

    cpu = serving.cpu_name()
    mean = lambda where, k: statistics.mean(r[k] for r in rows if r["where"] == where)
    print(f"| {cpu}, {a.rounds} alternating rounds | host | container | container / host | container, heads on fp32 |"
          " container / container fp32 |")
    print("|---|---|---|---|---|---|")
    for k, label in [("c1_p50_ms", "/classify c=1 p50 ms"), ("c1_p99_ms", "/classify c=1 p99 ms"),
                     ("c32_sentences_per_s", "/classify c=32 sentences/s"),
                     ("embed_c32_sentences_per_s", "/embed c=32 sentences/s"),
                     ("ready_rss_mib", "RSS once ready, MiB"), ("peak_rss_mib", "peak RSS, MiB")]:
        h, c, f = mean("host", k), mean("container", k), mean("container fp32", k)
        print(f"| {label} | {h:.2f} | {c:.2f} | {c / h:.3f} | {f:.2f} | {c / f:.3f} |")


if __name__ == "__main__":
    main()
