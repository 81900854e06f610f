#!/usr/bin/env python3
"""What one client can cost (`make attack`; RELIABILITY.md, "Bounded cost").

Starts the release binary on the default model (no heads) and measures, on
this machine:
  1. the largest request the limits admit (texts of 512 tokens, every token's
     vector back as JSON): its duration, the peak RSS while it runs, and the RSS
     3 s after, against the RSS before;
  2. single-sentence /embed requests sent every 100 ms meanwhile: p50/p99/max;
  3. the request every limit used to admit (256 texts of 600 words, pooling
     none): status and time;
  4. 300 connections that send nothing: how many are closed header timeout + 2 s later;
  5. a made-up HTTP method: whether it becomes a /metrics label;
  6. throughput: 16 clients of 8 short sentences for 10 s.
Runs against any binary (--bin), so the same script measures an older build.
Prints one JSON object; --markdown prints table rows for RELIABILITY.md."""
import argparse, http.client, json, os, socket, statistics, subprocess, sys, threading, time

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def rss_kb(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0

def post(port, path, body, timeout=120):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = json.dumps(body).encode()
    t = time.perf_counter()
    c.request("POST", path, data, {"content-type": "application/json"})
    r = c.getresponse(); payload = r.read(); c.close()
    return r.status, time.perf_counter() - t, payload

def get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path); r = c.getresponse(); payload = r.read(); c.close()
    return r.status, payload

def pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))] if v else float("nan")

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/distilserve")
    ap.add_argument("--model-dir", default="models/all-minilm-l6-v2")
    ap.add_argument("--server-arg", action="append", default=[], help="extra flag for `serve` (repeatable)")
    ap.add_argument("--label", default="")
    ap.add_argument("--header-timeout-s", type=float, default=10.0)
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()

    port = free_port()
    log = open(f"/tmp/attack-{port}.log", "w")
    cmd = [a.bin, "serve", "--host", "127.0.0.1", "--port", str(port), "--model-dir", a.model_dir,
           "--heads", "", "--default-head", "", *a.server_arg]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            try:
                if get(port, "/health/ready")[0] == 200: break
            except OSError: pass
            time.sleep(0.1)
        info = json.loads(get(port, "/info")[1])
        max_tokens = info["model"]["max_tokens"]
        budget = info["limits"].get("max_request_tokens")
        for _ in range(20):
            post(port, "/embed", {"inputs": "a gripping, funny film", "pooling": "mean"})
        time.sleep(1)
        baseline = rss_kb(proc.pid) / 1024
        startup_hwm = rss_kb(proc.pid, "VmHWM") / 1024
        # Reset the peak (VmHWM) so that it measures from here on (Linux >= 4.0).
        try:
            with open(f"/proc/{proc.pid}/clear_refs", "w") as f: f.write("5")
            hwm_reset = True
        except OSError:
            hwm_reset = False

        # 1 + 2: the largest admitted request, single sentences meanwhile.
        n_texts = max(1, budget // max_tokens) if budget else 256
        big = {"inputs": ["a " * 600] * n_texts, "pooling": "none"}
        done = threading.Event(); peak = [0.0]; singles = []
        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss_kb(proc.pid) / 1024); time.sleep(0.01)
        def single():
            while not done.is_set():
                status, secs, _ = post(port, "/embed", {"inputs": "a gripping, funny film", "pooling": "mean"})
                singles.append((status, secs)); time.sleep(0.1)
        threads = [threading.Thread(target=sample), threading.Thread(target=single)]
        for t in threads: t.start()
        time.sleep(0.3)
        status, big_secs, payload = post(port, "/embed", big, timeout=300)
        time.sleep(0.5); done.set()
        for t in threads: t.join()
        peak_mb = max(peak[0], rss_kb(proc.pid, "VmHWM") / 1024) if hwm_reset else peak[0]
        time.sleep(3)
        after = rss_kb(proc.pid) / 1024
        lat = [s for _, s in singles]

        # 3: the request every limit used to admit.
        old_status, old_secs, _ = post(port, "/embed", {"inputs": ["a " * 600] * 256, "pooling": "none"}, timeout=300)
        after_old = rss_kb(proc.pid) / 1024

        # 4: silent connections.
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
        time.sleep(a.header_timeout_s + 2)
        closed = 0
        for s in socks:
            s.settimeout(0.05)
            try:
                closed += s.recv(1) == b""
            except socket.timeout:
                pass
            except OSError:
                closed += 1
            s.close()

        # 5: a made-up method.
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"XMETHOD1 /embed HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"); s.recv(4096); s.close()
        method_label = "XMETHOD1" in get(port, "/metrics")[1].decode()

        # 6: throughput, short sentences.
        texts = ["a gripping, funny film that never drags", "dull", "the plot is too slow for its own good",
                 "great cast", "i would not watch it again", "moving", "a mess", "fine, if forgettable"]
        stop = time.perf_counter() + 10; count = [0]; lock = threading.Lock()
        def client():
            while time.perf_counter() < stop:
                st, _, _ = post(port, "/embed", {"inputs": texts, "pooling": "mean"})
                if st == 200:
                    with lock: count[0] += len(texts)
        ts = [threading.Thread(target=client) for _ in range(16)]
        for t in ts: t.start()
        for t in ts: t.join()
        peak_all = rss_kb(proc.pid, "VmHWM") / 1024

        result = {
            "label": a.label, "cpu": open("/proc/cpuinfo").read().split("model name")[1].split(":")[1].split("\n")[0].strip(),
            "server_args": a.server_arg, "max_request_tokens": budget,
            "largest": {"texts": n_texts, "tokens": n_texts * max_tokens, "status": status, "seconds": round(big_secs, 2),
                        "response_mb": round(len(payload) / 2**20, 1)},
            "rss_mb": {"startup_peak": round(startup_hwm), "before": round(baseline), "peak_during": round(peak_mb), "after_3s": round(after),
                       "after_old_attack": round(after_old), "peak_after_reset_whole_run": round(peak_all)},
            "singles_meanwhile": {"n": len(singles), "non_200": sum(1 for s, _ in singles if s != 200),
                                   "p50_ms": round(pct(lat, .5) * 1e3, 1), "p99_ms": round(pct(lat, .99) * 1e3, 1),
                                   "max_ms": round(max(lat) * 1e3, 1) if lat else None},
            "old_attack": {"status": old_status, "seconds": round(old_secs, 2)},
            "silent_connections": {"opened": 300, "closed_within_header_timeout_plus_2s": closed},
            "made_up_method_in_metrics": method_label,
            "throughput_sentences_per_s": round(count[0] / 10),
        }
        print(json.dumps(result, indent=1))
    finally:
        proc.terminate()
        try: proc.wait(20)
        except subprocess.TimeoutExpired: proc.kill()

if __name__ == "__main__":
    main()
