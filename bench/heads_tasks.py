#!/usr/bin/env python3
"""Issue 26's figures over the API, on the default model (MiniLM) and data the
tests never use:

  1. label weights on imbalanced labels: a 1:9 (neg:pos) subset of Rotten
     Tomatoes' train split uploaded twice (POST /heads), with class_weight
     "none" and "balanced", each judged on a 1:9 subset of the test split
     (marked `split: test` in the upload): held-out macro-F1 of both, and
     both evaluated side by side (POST /heads/{name}/evaluate, McNemar);
  2. the default head ("sentiment") against a pre-trained classifier that
     installs here, VADER (vaderSentiment 3.3.2, imported from the sdist
     scripts/setup.sh downloaded; its compound score >= 0 is "pos"), sent as a
     predictions column of the Rotten Tomatoes test split: both classifiers'
     figures and McNemar's p-value;
  3. the suspects of the 1:9 unweighted head (GET /heads/{name}/suspects);
  4. a multi-label head (options.multi_label) on texts of two or three
     sentences drawn from one to three of the four sources bundled with
     vaderSentiment (Amazon review snippets, movie review snippets, New York
     Times editorial snippets, tweets; Hutto & Gilbert 2014), labelled with the
     sources present: held-out micro-F1, macro-F1, subset accuracy. (The issue
     names UCI's sentiment labelled sentences, amazon/imdb/yelp, which cannot
     be fetched here; these are the same construction on the sources that can.)

    python3 bench/heads_tasks.py --bin target/release/distilserve   (make bench-heads-tasks)
"""

import argparse
import csv
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from heads_api import ADMIN, free_port, request  # noqa: E402


def vader(cache):
    """vaderSentiment's analyser, imported from its sdist (no network, no pip)."""
    sdist = os.path.join(cache, "downloads", "vaderSentiment-3.3.2.tar.gz")
    if not os.path.isfile(sdist):
        sys.exit(f"{sdist} is missing: run scripts/setup.sh")
    target = tempfile.mkdtemp(prefix="vader-")
    with tarfile.open(sdist) as tar:
        tar.extractall(target, filter="data")
    sys.path.insert(0, os.path.join(target, "vaderSentiment-3.3.2"))
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer  # noqa: E402

    return SentimentIntensityAnalyzer()


SOURCES = {
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "movies": "movieReviewSnippets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
}


def source_sentences(cache):
    """Each source's sentences, from the sdist's hutto_ICWSM_2014.tar.gz."""
    sdist = os.path.join(cache, "downloads", "vaderSentiment-3.3.2.tar.gz")
    with tarfile.open(sdist) as outer:
        inner = outer.extractfile("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz").read()
    found = {}
    with tarfile.open(fileobj=io.BytesIO(inner)) as tar:
        for source, file in SOURCES.items():
            member = next(m for m in tar.getmembers() if m.name.endswith(file))
            text = tar.extractfile(member).read().decode("utf-8", errors="replace")
            found[source] = [p[2].strip() for p in (l.split("\t") for l in text.splitlines()) if len(p) >= 3 and p[2].strip()]
    return found


def mixed_texts(sentences, n, seed):
    """n texts of 2 or 3 sentences from 1 to 3 sources (each chosen source at
    least once), labelled with the sources present; no sentence used twice."""
    rng = random.Random(seed)
    pools = {s: rng.sample(v, len(v)) for s, v in sentences.items()}
    rows = []
    for _ in range(n):
        k = rng.choice([1, 2, 3])
        chosen = rng.sample(sorted(pools), k)
        count = max(k, rng.choice([2, 3]))
        picks = chosen + [rng.choice(chosen) for _ in range(count - k)]
        rng.shuffle(picks)
        rows.append((" ".join(pools[s].pop() for s in picks), sorted(chosen)))
    return rows


def split(data, name):
    with open(os.path.join(data, f"{name}.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def one_to_nine(rows, labels, seed):
    """Every pos row and a ninth as many neg rows, drawn with `seed`."""
    pos = [r for r in rows if labels[r["label"]] == "pos"]
    neg = [r for r in rows if labels[r["label"]] == "neg"]
    random.Random(seed).shuffle(neg)
    return pos + neg[: max(1, len(pos) // 9)]


def to_csv(header, rows):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode()


def wait_ready(base, name, timeout=900):
    started = time.time()
    while time.time() - started < timeout:
        status, body, _ = request(base + f"/heads/{name}")
        if status == 200:
            detail = json.loads(body)
            if detail["status"] == "ready":
                return detail
            if detail["status"] == "failed":
                sys.exit(f"{name} failed: {detail['job']['error']}")
        time.sleep(0.5)
    sys.exit(f"{name} not ready within {timeout} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", default="target/release/distilserve")
    parser.add_argument("--data", default="data/rotten_tomatoes")
    parser.add_argument("--multi-label-texts", type=int, default=2000)
    parser.add_argument("--cache", default=os.environ.get("DISTILSERVE_CACHE", os.path.expanduser("~/.cache/distilserve")))
    args = parser.parse_args()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"CPU: {cpu}, {os.cpu_count()} cores")
    labels = json.load(open(os.path.join(args.data, "meta.json")))["labels"]
    train, test = split(args.data, "train"), split(args.data, "test")
    analyser = vader(args.cache)

    heads = tempfile.mkdtemp(prefix="bench-tasks-")
    port = free_port()
    # The default configuration (its "sentiment" head from models/heads), an admin key, a scratch copy of the heads.
    subprocess.run(["cp", "-r", "models/heads", os.path.join(heads, "heads")], check=True)
    env = dict(os.environ, DISTILSERVE_SECURITY__ADMIN_KEY=ADMIN, DISTILSERVE_CLASSIFY__HEADS_DIR=os.path.join(heads, "heads"))
    log = open(os.path.join(heads, "server.log"), "w")
    server = subprocess.Popen([args.bin, "serve", "--port", str(port), "--host", "127.0.0.1"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    admin = {"Authorization": f"Bearer {ADMIN}"}
    try:
        for _ in range(3000):
            try:
                if request(base + "/health", timeout=1)[0] == 200:
                    break
            except Exception:  # noqa: BLE001
                pass
            time.sleep(0.2)
        else:
            sys.exit("the server did not become ready; see " + log.name)

        # 1. Label weights on 1:9 labels.
        fit, held = one_to_nine(train, labels, 0), one_to_nine(test, labels, 1)
        upload = to_csv(["text", "label", "split"], [(r["text"], labels[r["label"]], "train") for r in fit]
                        + [(r["text"], labels[r["label"]], "test") for r in held])
        print(f"1:9 subset: {len(fit)} training texts ({sum(labels[r['label']] == 'neg' for r in fit)} neg), "
              f"{len(held)} held-out ({sum(labels[r['label']] == 'neg' for r in held)} neg)")
        results = {}
        for weight in ["none", "balanced"]:
            name = f"rt-1to9-{weight}"
            started = time.time()
            status, body, _ = request(base + f"/heads?name={name}&class_weight={weight}", upload,
                                      headers={**admin, "Content-Type": "text/csv"}, method="POST")
            assert status == 202, body
            detail = wait_ready(base, name)
            test_scores = detail["metrics"]["test"]
            results[weight] = test_scores
            per_label = {c["label"]: round(c["f1"], 4) for c in test_scores["per_class"]}
            print(json.dumps({"head": name, "class_weight": weight, "seconds": round(time.time() - started, 1),
                              "select_by": detail["training"].get("select_by", "accuracy"),
                              "class_weights": detail["training"].get("class_weights"),
                              "test_macro_f1": round(test_scores["macro_f1"], 4),
                              "test_accuracy": round(test_scores["accuracy"], 4), "test_f1_per_label": per_label}))
        gain = results["balanced"]["macro_f1"] - results["none"]["macro_f1"]
        print(f"macro-F1 on the 1:9 held-out part: unweighted {results['none']['macro_f1']:.4f}, "
              f"balanced {results['balanced']['macro_f1']:.4f} ({gain:+.4f})")
        held_csv = to_csv(["text", "label"], [(r["text"], labels[r["label"]]) for r in held])
        status, body, _ = request(base + "/heads/rt-1to9-balanced/evaluate?compare=rt-1to9-none", held_csv,
                                  headers={**admin, "Content-Type": "text/csv"}, method="POST", timeout=600)
        assert status == 200, body
        pair = json.loads(body)["comparisons"][0]
        print(json.dumps({"evaluate": "rt-1to9-balanced vs rt-1to9-none on the 1:9 held-out part", **pair}))

        # 2. The default head against VADER, on Rotten Tomatoes' test split.
        rows = [(r["text"], labels[r["label"]], "pos" if analyser.polarity_scores(r["text"])["compound"] >= 0 else "neg")
                for r in test]
        started = time.time()
        status, body, _ = request(base + "/heads/sentiment/evaluate", to_csv(["text", "label", "vader"], rows),
                                  headers={**admin, "Content-Type": "text/csv"}, method="POST", timeout=600)
        assert status == 200, body
        answer = json.loads(body)
        for s in answer["systems"]:
            print(json.dumps({"system": s["name"], "role": s["role"], "accuracy": round(s["scores"]["accuracy"], 4),
                              "macro_f1": round(s["scores"]["macro_f1"], 4), "calibration_error": s.get("calibration_error"),
                              "confusion": s["scores"]["confusion"]}))
        c = answer["comparisons"][0]
        print(f"sentiment vs VADER on {answer['examples']} test sentences ({time.time() - started:.1f} s): "
              f"only the head right {c['only_a_correct']}, only VADER right {c['only_b_correct']}, "
              f"McNemar exact p = {c['p_value']:.3g} (chi-square {c['chi_square']:.1f})")

        # 3. Suspects of the unweighted 1:9 head.
        status, body, _ = request(base + "/heads/rt-1to9-none/suspects", headers=admin)
        assert status == 200, body
        suspects = json.loads(body)["suspects"]
        print(f"suspects of rt-1to9-none: {len(suspects)}; the five lowest:")
        for s in suspects[:5]:
            print(f"  row {s['row']} {s['label']} -> {s['predicted']} p={s['probability']:.3f}: {s['text'][:90]}")

        # 4. A multi-label head: which sources a text's sentences come from.
        rows = mixed_texts(source_sentences(args.cache), args.multi_label_texts, 2)
        upload = to_csv(["text", "label"], [(t, "|".join(labels_of)) for t, labels_of in rows])
        started = time.time()
        status, body, _ = request(base + "/heads?name=sources&multi_label=true", upload,
                                  headers={**admin, "Content-Type": "text/csv"}, method="POST")
        assert status == 202, body
        detail = wait_ready(base, "sources")
        test_scores = detail["metrics"]["multi_label_test"]
        print(json.dumps({"head": "sources", "texts": len(rows), "seconds": round(time.time() - started, 1),
                          "pooling": detail["pooling"], "layers": detail["layers"], "alpha": detail["training"]["alpha"],
                          "test_examples": test_scores["examples"], "test_micro_f1": round(test_scores["micro_f1"], 4),
                          "test_macro_f1": round(test_scores["macro_f1"], 4),
                          "test_subset_accuracy": round(test_scores["subset_accuracy"], 4),
                          "per_label": {l["label"]: {"f1": round(l["f1"], 4), "threshold": l["threshold"]} for l in test_scores["per_label"]}}))
        status, body, _ = request(base + "/classify", {"inputs": [rows[0][0]], "head": "sources"})
        print("classify:", rows[0][1], "->", json.loads(body)["predictions"][0]["labels"])
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
