"""The heads' graph settings against each other, services started one after
another over one heads folder (trained at the first start that lacks a head,
then reused): `/classify` or `/embed` at --clients closed-loop clients, and
VmRSS read at given seconds after ready (a heads' graph that no head is served
on is closed just after ready, and its memory goes back over a few seconds).

  python3 bench/heads_graph_ab.py --model-dir models/all-minilm-l6-v2 \\
      --heads-dir /tmp/ab-heads --setting "" --setting auto --setting auto:1 \\
      [--route /classify] [--seconds 15] [--rounds 2] [--rss-after 0,2,10,30]

Each --setting is `classify.model_file[:classify.model_sessions]`, then any
` NAME=VALUE` environment for the service (`"auto MIMALLOC_PURGE_DELAY=0"`). Runs them
in order, --rounds times, the sentiment head as default; one JSON line each.
"""
import argparse, json, os, shutil, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import closed_loop, cpu_name, rss_mib, start, stop  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=str(ROOT / "target/release/distilserve"))
    p.add_argument("--model-dir", required=True)
    p.add_argument("--heads-dir", required=True, help="created from models/heads when missing")
    p.add_argument("--setting", action="append", required=True)
    p.add_argument("--route", default="/classify", choices=["/classify", "/embed"])
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--rss-after", default="", help="comma-separated seconds after ready; empty: none")
    a = p.parse_args()
    if not os.path.exists(a.heads_dir):
        shutil.copytree(ROOT / "models/heads", a.heads_dir)
    sentences = [json.loads(l)["text"] for l in open(ROOT / "data/rotten_tomatoes/test.jsonl")]
    extra = {"pooling": "mean"} if a.route == "/embed" else {}
    body = lambda i: {"inputs": [sentences[i % len(sentences)]], **extra}  # noqa: E731
    print(f"CPU: {cpu_name()}; {a.route}, {a.clients} clients, {a.seconds:.0f} s", flush=True)
    for _ in range(a.rounds):
        for setting in a.setting:
            graph_sessions, *variables = setting.split(" ")
            graph, _, sessions = graph_sessions.partition(":")
            env = {"DISTILSERVE_CLASSIFY__MODEL_SESSIONS": sessions or "0"}
            env.update(v.split("=", 1) for v in variables)
            saved = dict(os.environ)
            os.environ.update(env)
            started = time.time()
            proc, port = start(a.bin, a.model_dir, "--heads-dir", a.heads_dir, "--classify-model-file", graph,
                               heads="sentiment", log_name="heads-graph-ab", ready_s=1800)
            os.environ.clear()
            os.environ.update(saved)
            try:
                row = {"setting": setting, "ready_s": round(time.time() - started, 1)}
                ready = time.time()
                for after in [float(s) for s in a.rss_after.split(",") if s]:
                    time.sleep(max(0.0, ready + after - time.time()))
                    row[f"rss_mib_at_{after:g}s"] = rss_mib(proc.pid, "VmRSS")
                if a.seconds > 0:
                    closed_loop(port, a.route, body, a.clients, 3)
                    row[a.route] = closed_loop(port, a.route, body, a.clients, a.seconds)
                    row["rss_mib"] = rss_mib(proc.pid, "VmRSS")
                print(json.dumps(row), flush=True)
            finally:
                stop(proc)


if __name__ == "__main__":
    main()
