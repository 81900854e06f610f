#!/usr/bin/env python3
"""What a 16 MiB upload to `POST /heads` costs (RELIABILITY.md, "Bounded cost").

Starts the binary (--bin, repeatable: compare builds in one run) on the default
model with an admin key and sends, one at a time, bodies of 16 MiB minus a
little (training.max_upload_bytes) of the smallest rows: CSV (`x,a` per line),
JSONL and JSON. Each is over training.max_examples (50,000). For each: status,
error code, seconds, and the process's peak RSS over its RSS before (VmHWM reset).
Then four CSV uploads at once. Prints one JSON object.

    python3 bench/upload_peak.py --bin target/release/distilserve
"""
import argparse, http.client, json, os, subprocess, threading, time

from serving import cpu_name, start, stop

ADMIN = "upload-peak-admin"


def kb(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])


def post(port, path, body, content_type):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    t = time.perf_counter()
    c.request("POST", path, body, {"content-type": content_type, "authorization": f"Bearer {ADMIN}"})
    r = c.getresponse(); payload = r.read(); c.close()
    try: code = json.loads(payload)["error"]["code"]
    except Exception: code = None
    return r.status, code, round(time.perf_counter() - t, 2)


def bodies(limit):
    csv = b"text,label\n" + b"x,a\n" * ((limit - 100) // 4)
    jsonl = b'{"text":"x","label":"a"}\n' * ((limit - 100) // 25)
    n = (limit - 200) // 27
    js = b'{"name":"big","examples":[' + b",".join([b'{"text":"x","label":"a"}'] * n) + b"]}"
    return [("csv", "/heads?name=big", csv, "text/csv"), ("jsonl", "/heads?name=big", jsonl, "application/jsonl"),
            ("json", "/heads", js, "application/json")]


def run(binary, model_dir, limit):
    heads_dir = f"/tmp/upload-peak-heads-{os.getpid()}"
    proc, port = start(binary, model_dir, "--heads-dir", heads_dir, admin_key=ADMIN, log_name="upload-peak")
    try:
        out = {}
        for name, path, body, ct in bodies(limit):
            time.sleep(0.5)
            open(f"/proc/{proc.pid}/clear_refs", "w").write("5")
            before = kb(proc.pid, "VmRSS")
            status, code, secs = post(port, path, body, ct)
            out[name] = {"bytes": len(body), "status": status, "code": code, "seconds": secs,
                         "peak_over_before_mb": round((kb(proc.pid, "VmHWM") - before) / 1024)}
        time.sleep(0.5)
        open(f"/proc/{proc.pid}/clear_refs", "w").write("5")
        before = kb(proc.pid, "VmRSS")
        csv = bodies(limit)[0]
        results = []
        ts = [threading.Thread(target=lambda: results.append(post(port, csv[1], csv[2], csv[3]))) for _ in range(4)]
        for t in ts: t.start()
        for t in ts: t.join()
        out["4 csv at once"] = {"statuses": sorted(r[0] for r in results),
                                "peak_over_before_mb": round((kb(proc.pid, "VmHWM") - before) / 1024)}
        return out
    finally:
        stop(proc)
        subprocess.run(["rm", "-rf", heads_dir])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", action="append", default=[])
    ap.add_argument("--model-dir", default="models/all-minilm-l6-v2")
    ap.add_argument("--limit", type=int, default=16 * 2**20)
    a = ap.parse_args()
    cpu = cpu_name()
    print(json.dumps({"cpu": cpu, "runs": {b: run(b, a.model_dir, a.limit) for b in (a.bin or ["target/release/distilserve"])}}, indent=1))


if __name__ == "__main__":
    main()
