#!/usr/bin/env python3
"""The head search against scikit-learn on the same arrays, in one run.

    python3 bench/train_speed.py --bin target/release/distilserve   (make bench-train)

Features are extracted once per feature set (`distilserve extract`, the exact
graph, from the feature cache when present; not timed). Then, per set:

- ours: `distilserve train --features DIR` (the alpha search over a 3-fold
  cross-validation of train+validation, then the final fit), its own
  `training.seconds` (the search and final fit, without reading the arrays);
- scikit-learn: the same protocol by hand: rows i % 3 held out in fold i,
  StandardScaler fitted on each fold's fitted rows, LogisticRegression(lbfgs)
  along the same alphas from the strongest penalty down with warm starts
  (C = 2/alpha for two labels, 1/alpha for more: the same minimiser as
  linfa's penalty, see src/heads/search.rs `plain_logistic`), tol 1e-4,
  max_iter 300; the alpha of the best mean held-out accuracy; the final fit
  on every searched row; test accuracy.

Sets: Rotten Tomatoes with mean pooling of the last four layers (384 wide),
[CLS]+mean of the last layer (768), [CLS]+mean of the last two side by side
(1,536), and a 3-label set (Amazon review snippets from the same sdist,
rating <= -1 negative, >= 1 positive, else neutral). With --full it also
times the service's own startup search (`distilserve train --head
sentiment`: 12 feature sets from the text, extraction included and reported
apart), on the exact graph.

Prints one table; the ratio is ours / scikit-learn's (below 1: ours faster).
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("DISTILSERVE_CACHE", Path.home() / ".cache/distilserve"))
ALPHAS = [1.0, 10.0, 100.0, 1000.0, 10000.0]
FOLDS = 3


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def amazon_three_labels(out: Path) -> Path:
    """A 3-label data set folder from the Amazon review snippets (80/10/10 per label, seed 0)."""
    from heads_api import reviews  # the snippets and their labels, as bench/heads_api.py reads them
    labels = ["negative", "neutral", "positive"]
    by_label = {l: [] for l in range(3)}
    for text, label in reviews(str(CACHE)):
        by_label[labels.index(label)].append(text)
    splits = {"train": [], "validation": [], "test": []}
    rng = random.Random(0)
    for label, texts in by_label.items():
        rng.shuffle(texts)
        a, b = int(len(texts) * 0.8), int(len(texts) * 0.9)
        for name, part in (("train", texts[:a]), ("validation", texts[a:b]), ("test", texts[b:])):
            splits[name] += [{"text": t, "label": label} for t in part]
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        rng.shuffle(rows)
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "meta.json").write_text(json.dumps({"name": "amazon-3", "labels": labels}))
    return out


def extract(binary: str, data: Path, pooling: str, layers: str, out: Path) -> None:
    subprocess.run([binary, "extract", "--data", str(data), "--pooling", pooling, "--layers", layers,
                    "--out", str(out), "--log-filter", "warn"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def ours(binary: str, features: Path, heads: Path, name: str) -> dict:
    started = time.perf_counter()
    subprocess.run([binary, "train", "--head", name, "--features", str(features), "--cv-folds", str(FOLDS),
                    "--alphas", ",".join(str(a) for a in ALPHAS), "--max-iterations", "300",
                    "--heads-dir", str(heads), "--log-filter", "warn"],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    head = json.loads((heads / f"{name}.json").read_text())
    return {"seconds": head["training"]["seconds"], "wall": wall, "alpha": head["training"]["alpha"],
            "test": head["metrics"]["test"]["accuracy"], "held_out": head["training"]["held_out_accuracy"]}


def sklearn_search(features: Path) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    load = lambda split, name: np.load(features / split / f"{name}.npy")
    x = np.concatenate([load("train", "X"), load("validation", "X")]).astype(np.float64)
    y = np.concatenate([load("train", "y"), load("validation", "y")])
    test_x, test_y = load("test", "X").astype(np.float64), load("test", "y")
    classes = len(np.unique(y))
    c_of = lambda alpha: (2.0 if classes == 2 else 1.0) / alpha
    started = time.perf_counter()
    accuracy = {a: 0.0 for a in ALPHAS}
    index = np.arange(len(y))
    for fold in range(FOLDS):
        held, kept = index % FOLDS == fold, index % FOLDS != fold
        scaler = StandardScaler().fit(x[kept])
        fit_x, held_x = scaler.transform(x[kept]), scaler.transform(x[held])
        model = LogisticRegression(max_iter=300, tol=1e-4, warm_start=True)
        for alpha in sorted(ALPHAS, reverse=True):
            model.set_params(C=c_of(alpha)).fit(fit_x, y[kept])
            accuracy[alpha] += model.score(held_x, y[held]) / FOLDS
    best = max(ALPHAS, key=lambda a: (accuracy[a], -a))
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(max_iter=300, tol=1e-4, C=c_of(best)).fit(scaler.transform(x), y)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "alpha": best, "test": model.score(scaler.transform(test_x), test_y),
            "held_out": accuracy[best]}


def full_search(binary: str, heads: Path) -> dict:
    """The service's startup search of the default head (12 feature sets), on the exact graph."""
    started = time.perf_counter()
    run = subprocess.run([binary, "train", "--head", "sentiment", "--heads-dir", str(heads),
                          "--classify-model-file", "", "--log-filter", "info,ort=warn", "--log-format", "json"],
                         check=True, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    head = json.loads((heads / "sentiment.json").read_text())
    return {"seconds": head["training"]["seconds"], "wall": wall,
            "alpha": head["training"]["alpha"], "test": head["metrics"]["test"]["accuracy"],
            "pooling": head["pooling"], "layers": head.get("layers"),
            "sets": len({(c["pooling"], json.dumps(c.get("layers"))) for c in head["training"]["candidates"]})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=str(ROOT / "target/release/distilserve"))
    p.add_argument("--full", action="store_true", help="also time the default head's startup search (12 sets)")
    p.add_argument("--rounds", type=int, default=1, help="times each side runs per set (the minimum is kept)")
    a = p.parse_args()
    try:
        import threadpoolctl
        blas = threadpoolctl.threadpool_info()
        blas = ", ".join(f"{i['internal_api']} {i.get('architecture', '')} {i['num_threads']} threads" for i in blas)
    except ImportError:
        blas = "unknown BLAS"
    import sklearn
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; scikit-learn {sklearn.__version__} ({blas})")
    work = Path(tempfile.mkdtemp(prefix="train-speed-"))
    amazon = amazon_three_labels(work / "amazon-3")
    sets = [
        ("rotten_tomatoes", ROOT / "data/rotten_tomatoes", "mean", "mean(-4,-3,-2,-1)"),
        ("rotten_tomatoes", ROOT / "data/rotten_tomatoes", "cls_mean", "-1"),
        ("rotten_tomatoes", ROOT / "data/rotten_tomatoes", "cls_mean", "concat(-2,-1)"),
        ("amazon 3 labels", amazon, "mean", "mean(-4,-3,-2,-1)"),
    ]
    print(f"{'data':<16} {'features':<28} {'rows':>6} {'width':>5} | {'ours s':>7} {'sklearn s':>9} {'ratio':>6} | "
          f"{'alpha ours/sk':>14} | {'test ours':>9} {'test sk':>8}")
    ratios = []
    for i, (name, data, pooling, layers) in enumerate(sets):
        features = work / f"features-{i}"
        extract(a.bin, data, pooling, layers, features)
        x = np.load(features / "train" / "X.npy", mmap_mode="r")
        rows = x.shape[0] + np.load(features / "validation" / "X.npy", mmap_mode="r").shape[0]
        mine = min((ours(a.bin, features, work / "heads", f"bench-{i}") for _ in range(a.rounds)),
                   key=lambda r: r["seconds"])
        theirs = min((sklearn_search(features) for _ in range(a.rounds)), key=lambda r: r["seconds"])
        ratio = mine["seconds"] / theirs["seconds"]
        ratios.append(ratio)
        print(f"{name:<16} {pooling + ' ' + layers:<28} {rows:>6} {x.shape[1]:>5} | {mine['seconds']:>7.2f} "
              f"{theirs['seconds']:>9.2f} {ratio:>5.2f}x | {mine['alpha']:>6g}/{theirs['alpha']:<7g} | "
              f"{mine['test']:>9.4f} {theirs['test']:>8.4f}", flush=True)
    print(f"ratio ours/scikit-learn: {min(ratios):.2f}x to {max(ratios):.2f}x "
          f"(ours: the search's own seconds; process start and reading the arrays excluded, as for scikit-learn)")
    if a.full:
        r = full_search(a.bin, work / "heads")
        print(f"default head's startup search, exact graph: {r['sets']} feature sets, search and final fit "
              f"{r['seconds']:.1f} s (the command: {r['wall']:.1f} s with the model's load and "
              f"the extraction, or the feature cache); chose {r['pooling']} {json.dumps(r['layers'])} alpha {r['alpha']:g}, test {r['test']:.4f}")


if __name__ == "__main__":
    main()
