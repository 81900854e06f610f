#!/usr/bin/env python3
"""Peak memory of /classify with many requests in flight (`make bench-classify-memory`; BENCHMARKS.md).

For each binary given (--bin, repeatable: an older build beside this one, in
the same run), on the default model and its default head (`sentiment`, which
reads the mean of the last four hidden states), --clients closed-loop clients
each send --texts Rotten Tomatoes sentences per `POST /classify` for
--seconds (a 503 waits for its Retry-After). The queue interleaves requests (a few sequences of each in turn),
so every request in flight holds what its computed sequences left behind
until its last one is done: every requested layer's rows per token, or (since
issue 23) the heads' features alone. Prints idle and peak RSS (VmHWM), the
requests answered and their p50/p99, as one JSON object.

    python3 bench/classify_memory.py --bin target/release/distilserve [--bin OLD]
"""
import argparse, http.client, json, threading, time

from serving import cpu_name, start, stop


def rss_mb(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return None


def run_binary(binary, model_dir, sentences, clients, texts, seconds):
    proc, port = start(binary, model_dir, log_name="classify-memory", heads="sentiment")
    try:
        idle = rss_mb(proc.pid, "VmRSS")
        results, lock = [], threading.Lock()
        until = time.perf_counter() + seconds

        def client(k):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            i = k * texts
            while time.perf_counter() < until:
                body = json.dumps({"inputs": [sentences[(i + j) % len(sentences)] for j in range(texts)]})
                t = time.perf_counter()
                c.request("POST", "/classify", body.encode(), {"content-type": "application/json"})
                r = c.getresponse(); r.read()
                with lock: results.append((r.status, time.perf_counter() - t))
                i += clients * texts
                if r.status == 503:  # as clients do: wait for Retry-After
                    time.sleep(float(r.getheader("retry-after", "1")))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads: t.start()
        for t in threads: t.join()
        ok = sorted(s for status, s in results if status == 200)
        pct = lambda q: round(ok[min(len(ok) - 1, int(q * (len(ok) - 1)))] * 1e3) if ok else None
        return {"idle_rss_mb": round(idle), "peak_rss_mb": round(rss_mb(proc.pid, "VmHWM")),
                "answered": len(ok), "refused_503": sum(1 for status, _ in results if status == 503),
                "other": sum(1 for status, _ in results if status not in (200, 503)),
                "p50_ms": pct(.5), "p99_ms": pct(.99)}
    finally:
        stop(proc)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", action="append", default=[])
    ap.add_argument("--model-dir", default="models/all-minilm-l6-v2")
    ap.add_argument("--data", default="data/rotten_tomatoes/test.jsonl")
    ap.add_argument("--clients", type=int, default=128)
    ap.add_argument("--texts", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=20)
    a = ap.parse_args()
    sentences = [json.loads(l)["text"] for l in open(a.data)]
    cpu = cpu_name()
    out = {"cpu": cpu, "model": a.model_dir, "clients": a.clients, "texts_per_request": a.texts, "runs": {}}
    for b in (a.bin or ["target/release/distilserve"]):
        out["runs"][b] = run_binary(b, a.model_dir, sentences, a.clients, a.texts, a.seconds)
        time.sleep(2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
