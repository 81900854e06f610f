#!/usr/bin/env python3
"""Does queue-time admission tell the truth? (`make bench-admission`; BENCHMARKS.md)

For each binary given (--bin, repeatable: an older build beside this one, in
the same run), on the default model with its default settings
(batching.max_queue_wait_ms 5000), three loads of Rotten Tomatoes test
sentences through `POST /embed` (mean pooling: the encoder work of /classify):
  burst    after idle: 5 single sentences, then 40 requests of 8 sentences at once
  steady   --clients closed-loop clients of one sentence each for --seconds
  overload open-loop arrivals at twice the steady throughput for --seconds
and for each: answered / refused (503 overloaded), latency p50/p99 of the
answered, time to refuse, and the estimate's error where the service sends
one (`x-queue-estimate-ms` against `x-queue-time-ms`, per answered request).
Prints one JSON object; --markdown prints table rows.

    python3 bench/admission.py --bin target/release/distilserve [--bin OLD] [--markdown]
"""
import argparse, http.client, json, threading, time

from serving import cpu_name, start, stop


def post(port, body, timeout=60):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t = time.perf_counter()
    try:
        c.request("POST", "/embed", json.dumps(body).encode(), {"content-type": "application/json"})
        r = c.getresponse(); r.read(); c.close()
    except OSError:  # refused or reset before an answer: counted as "other"
        return {"status": 0, "seconds": time.perf_counter() - t, "queue_ms": None, "estimate_ms": None}
    h = {k.lower(): v for k, v in r.getheaders()}
    est = h.get("x-queue-estimate-ms")
    return {"status": r.status, "seconds": time.perf_counter() - t,
            "queue_ms": float(h["x-queue-time-ms"]) if "x-queue-time-ms" in h else None,
            "estimate_ms": float(est) if est is not None else None}


def pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))] if v else None


def summary(results, wall):
    ok = [r for r in results if r["status"] == 200]
    refused = [r for r in results if r["status"] == 503]
    errors = [(r["estimate_ms"] - r["queue_ms"]) for r in ok if r["estimate_ms"] is not None and r["queue_ms"] is not None]
    ms = lambda v: round(v * 1e3, 1) if v is not None else None
    return {
        "sent": len(results), "answered": len(ok), "refused_503": len(refused),
        "other": len(results) - len(ok) - len(refused),
        "answered_per_s": round(len(ok) / wall, 1),
        "p50_ms": ms(pct([r["seconds"] for r in ok], .5)), "p99_ms": ms(pct([r["seconds"] for r in ok], .99)),
        "refusal_p99_ms": ms(pct([r["seconds"] for r in refused], .99)),
        "estimate_minus_actual_ms": {"p50": round(pct(errors, .5), 1) if errors else None,
                                     "p10": round(pct(errors, .1), 1) if errors else None,
                                     "p90": round(pct(errors, .9), 1) if errors else None,
                                     "n": len(errors)},
    }


def run_binary(binary, model_dir, sentences, clients, seconds):
    proc, port = start(binary, model_dir, log_name="admission")
    try:
        out = {}
        # Burst after idle.
        for i in range(5):
            post(port, {"inputs": sentences[i], "pooling": "mean"})
        time.sleep(2)
        results, lock = [], threading.Lock()
        def one(i):
            r = post(port, {"inputs": sentences[8 * i: 8 * i + 8], "pooling": "mean"})
            with lock: results.append(r)
        t0 = time.perf_counter()
        ts = [threading.Thread(target=one, args=(i,)) for i in range(40)]
        for t in ts: t.start()
        for t in ts: t.join()
        out["burst"] = summary(results, time.perf_counter() - t0)
        time.sleep(2)

        # Steady closed loop.
        results = []
        until = time.perf_counter() + seconds
        def client(k):
            i = k
            while time.perf_counter() < until:
                r = post(port, {"inputs": sentences[i % len(sentences)], "pooling": "mean"})
                with lock: results.append(r)
                i += clients
                if r["status"] == 503: time.sleep(0.05)
        t0 = time.perf_counter()
        ts = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in ts: t.start()
        for t in ts: t.join()
        out["steady"] = summary(results, time.perf_counter() - t0)
        capacity = out["steady"]["answered_per_s"]
        time.sleep(2)

        # Open-loop overload at twice the capacity just measured.
        rate = max(1.0, 2 * capacity)
        results = []
        threads = []
        t0 = time.perf_counter()
        n = int(rate * seconds)
        for k in range(n):
            due = t0 + k / rate
            while time.perf_counter() < due: time.sleep(min(0.001, max(0, due - time.perf_counter())))
            t = threading.Thread(target=lambda k=k: (lambda r: (lock.acquire(), results.append(r), lock.release()))(
                post(port, {"inputs": sentences[k % len(sentences)], "pooling": "mean"})))
            t.start(); threads.append(t)
        for t in threads: t.join()
        out["overload"] = {"offered_per_s": round(rate, 1), **summary(results, time.perf_counter() - t0)}
        return out
    finally:
        stop(proc)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", action="append", default=[])
    ap.add_argument("--model-dir", default="models/all-minilm-l6-v2")
    ap.add_argument("--data", default="data/rotten_tomatoes/test.jsonl")
    ap.add_argument("--clients", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    sentences = [json.loads(l)["text"] for l in open(a.data)]
    cpu = cpu_name()
    result = {"cpu": cpu, "model": a.model_dir, "clients": a.clients, "seconds": a.seconds, "runs": {}}
    for b in (a.bin or ["target/release/distilserve"]):
        result["runs"][b] = run_binary(b, a.model_dir, sentences, a.clients, a.seconds)
        time.sleep(3)
    if a.markdown:
        print(f"| binary | load | sent | answered | 503 | answered/s | p50 ms | p99 ms | 503 p99 ms | estimate - actual p10/p50/p90 ms |  ({cpu})")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for b, run in result["runs"].items():
            for load, s in run.items():
                e = s["estimate_minus_actual_ms"]
                print(f"| {b} | {load} | {s['sent']} | {s['answered']} | {s['refused_503']} | {s['answered_per_s']} | {s['p50_ms']} | {s['p99_ms']} | {s['refusal_p99_ms']} | {e['p10']} / {e['p50']} / {e['p90']} |")
    else:
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
