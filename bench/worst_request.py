#!/usr/bin/env python3
"""The worst request the limits admit, over every option (`make worst-request`;
RELIABILITY.md "Bounded cost"; the deploy files' memory figures come from it).

Starts the release binary on the default model with three heads created over
the API, then for each combination of options (route, pooling, layers and
how they combine, windows, several heads, explain, JSON or .npy) and two
shapes of texts (`full`: texts of the model's maximum; `padded`: one such text
and many one-word texts, what a zero-padded .npy pays most for) finds the
largest request that is admitted (a 413 from the cost model costs nothing, so
the search is cheap), then sends it to a fresh process (the allocator keeps
freed pages counted in RSS for a while, so one process would carry each
request's memory into the next) and records its status, time, answer size and
the process's peak RSS (VmHWM) against its RSS before the request.
Prints one JSON object; --markdown prints table rows.

    python3 bench/worst_request.py --bin target/release/distilserve [--model-dir DIR] [--markdown]
"""
import argparse, http.client, json, os, subprocess, sys, time

import serving
from serving import stop

ADMIN = "worst-request-admin"


def status_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def request(port, method, path, body=None, headers=None, timeout=300):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = json.dumps(body).encode() if body is not None else None
    h = {"content-type": "application/json", **(headers or {})}
    t = time.perf_counter()
    c.request(method, path, data, h)
    r = c.getresponse(); payload = r.read(); c.close()
    return r.status, time.perf_counter() - t, payload


def error_code(payload):
    try:
        return json.loads(payload)["error"]["code"]
    except Exception:
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/distilserve")
    ap.add_argument("--model-dir", default="models/all-minilm-l6-v2")
    ap.add_argument("--server-arg", action="append", default=[])
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--quick", action="store_true", help="JSON per token and .npy only (a smoke run)")
    a = ap.parse_args()

    heads_dir = f"/tmp/worst-request-heads-{os.getpid()}"

    def start():
        proc, port = serving.start(a.bin, a.model_dir, "--heads-dir", heads_dir, *a.server_arg,
                                   admin_key=ADMIN, log_name="worst-request")
        for _ in range(10):
            request(port, "POST", "/embed", {"inputs": "a gripping, funny film", "pooling": "mean"})
        return proc, port

    proc, port = start()
    pid = proc.pid
    try:
        info = json.loads(request(port, "GET", "/info")[2])
        max_tokens, layers = info["model"]["max_tokens"], info["model"]["layers"]
        limits = info["limits"]

        # Three heads over the API (the search picks their layers and pooling).
        words = {"pos": "good great fun love best happy", "neg": "bad dull boring hate worst sad"}
        for name in ["h1", "h2", "h3"]:
            examples = [{"text": f"{w.split()[i % 6]} {w.split()[(i + 1) % 6]} film {i}", "label": label}
                        for label, w in words.items() for i in range(24)]
            st, _, body = request(port, "POST", "/heads", {"name": name, "examples": examples},
                                  {"authorization": f"Bearer {ADMIN}"})
            assert st == 202, body
        for name in ["h1", "h2", "h3"]:
            while json.loads(request(port, "GET", f"/heads/{name}")[2]).get("status") != "ready":
                time.sleep(0.2)
        time.sleep(1)
        idle_mb = status_kb(pid, "VmRSS") / 1024

        long_text = "word " * (max_tokens + 100)     # truncated to the model's maximum
        window_text = "word " * 2000                 # cut into windows
        all_layers = list(range(layers + 1)) if layers else [-1]

        def body_of(case, n):
            route, opts, shape = case["route"], case["opts"], case["shape"]
            if shape == "full":
                texts = [long_text] * n
            elif shape == "padded":
                texts = [long_text] + ["a"] * n
            else:  # windows
                texts = [window_text] * n
            body = {"inputs": texts, **opts}
            return route, body

        def send(case, n, to=None):
            route, body = body_of(case, n)
            headers = {"accept": "application/x-npy"} if case.get("npy") else {}
            return request(to or port, "POST", route, body, headers)

        def largest(case):
            """Largest n admitted (not 413) for this case, by bisection."""
            hi = {"full": limits["max_inputs"], "padded": limits["max_inputs"] - 1, "windows": limits["max_inputs"]}[case["shape"]]
            lo, best = (1 if case["shape"] != "padded" else 0), None
            refusals = {}
            while lo <= hi:
                mid = (lo + hi) // 2
                route, body = body_of(case, mid)
                st, _, payload = send(case, mid)
                if st == 413:
                    refusals[error_code(payload)] = refusals.get(error_code(payload), 0) + 1
                    hi = mid - 1
                else:
                    best = mid
                    lo = mid + 1
            return best, refusals

        cases = []
        for route in ["/embed"]:
            for npy in [False, True]:
                for pooling in ["none", "mean"]:
                    for lname, lopts in [("last", {}), ("all mean", {"layers": all_layers, "layer_combine": "mean"}),
                                         ("all concat", {"layers": all_layers, "layer_combine": "concat"})]:
                        for shape in (["full", "padded"] if pooling == "none" else ["full"]):
                            if a.quick and (pooling != "none" or lname == "all mean"):
                                continue
                            cases.append({"route": route, "npy": npy, "shape": shape,
                                          "name": f"/embed {pooling}, {lname}, {'npy' if npy else 'json'}, {shape}",
                                          "opts": {"pooling": pooling, **lopts}})
        if not a.quick:
            cases.append({"route": "/embed", "shape": "windows", "name": "/embed mean, all concat, windows, json",
                          "opts": {"pooling": "mean", "windows": True, "layers": all_layers, "layer_combine": "concat"}})
            for heads, explain in [(["h1"], False), (["h1"], True), (["h1", "h2", "h3"], False), (["h1", "h2", "h3"], True)]:
                cases.append({"route": "/classify", "shape": "full",
                              "name": f"/classify {len(heads)} head(s){', explain' if explain else ''}",
                              "opts": {"heads": heads, "explain": explain}})
            cases.append({"route": "/classify", "shape": "windows", "name": "/classify 3 heads, windows",
                          "opts": {"heads": ["h1", "h2", "h3"], "windows": True}})

        rows = []
        for case in cases:
            n, refusals = largest(case)
            row = {"case": case["name"], "texts": None, "status": None}
            if n is None:
                row["refused"] = refusals
                rows.append(row); continue
            fresh, fresh_port = start()
            try:
                time.sleep(0.3)
                # From here on: the peak of the request alone, not of startup.
                with open(f"/proc/{fresh.pid}/clear_refs", "w") as f: f.write("5")
                before = status_kb(fresh.pid, "VmRSS") / 1024
                st, secs, payload = send(case, n, fresh_port)
                peak = status_kb(fresh.pid, "VmHWM") / 1024
            finally:
                stop(fresh)
            texts = n + 1 if case["shape"] == "padded" else n
            row.update({"texts": texts, "status": st, "seconds": round(secs, 2), "answer_mb": round(len(payload) / 2**20, 1),
                        "rss_before_mb": round(before), "peak_rss_mb": round(peak), "refusals_on_the_way": refusals})
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)

        worst = max((r for r in rows if r.get("peak_rss_mb")), key=lambda r: r["peak_rss_mb"])
        cpu = serving.cpu_name()
        result = {"cpu": cpu, "model": info["model"]["name"], "limits": limits, "idle_rss_mb": round(idle_mb),
                  "worst": worst, "rows": rows}
        if a.markdown:
            print(f"| case | texts | status | s | answer MB | peak RSS MB |  ({cpu}, {info['model']['name']}, idle {round(idle_mb)} MB)")
            print("|---|---|---|---|---|---|")
            for r in rows:
                print(f"| {r['case']} | {r['texts']} | {r['status']} | {r.get('seconds', '')} | {r.get('answer_mb', '')} | {r.get('peak_rss_mb', '')} |")
        else:
            print(json.dumps(result, indent=1))
    finally:
        stop(proc)
        subprocess.run(["rm", "-rf", heads_dir])


if __name__ == "__main__":
    main()
