#!/usr/bin/env python3
"""Parity of a distilserve logistic head with scikit-learn, in one run.

    python bench/parity.py [--head models/heads/sentiment.json] [--bin target/release/distilserve]

Extracts the head's features with `distilserve extract` (the same pooled last
hidden states, from the feature cache when present), trains scikit-learn's
LogisticRegression with the head's protocol (standardised features, the head's
alpha as C = 2/alpha, fitted on the same splits) and compares test accuracy.
For context it also runs the lecture's recipe: LogisticRegression() with default
settings on raw [CLS] and on raw mean features of the train split.
Exits 1 when the head and scikit-learn differ by more than 1 point.
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

ROOT = Path(__file__).resolve().parent.parent


def layers_spec(head: dict) -> str:
    """The head's hidden states as `distilserve extract --layers` takes them."""
    layers = head.get("layers")
    if not layers:
        return "-1"
    last = head["encoder"].get("layers") or 0
    rel = ",".join(str(i - last - 1) for i in layers["indices"])
    return rel if len(layers["indices"]) == 1 else f"{layers['combine']}({rel})"


def extract(binary: str, data: str, pooling: str, out: Path, extra: list[str], layers: str = "-1") -> dict:
    subprocess.run([binary, "extract", "--data", data, "--pooling", pooling, "--layers", layers, "--out", str(out),
                    "--log-filter", "warn", *extra],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    load = lambda split, name: np.load(out / split / f"{name}.npy")
    return {s: (load(s, "X"), load(s, "y")) for s in ("train", "validation", "test")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--head", default=str(ROOT / "models/heads/sentiment.json"))
    default_bin = ROOT / "target/release/distilserve"
    p.add_argument("--bin", default=str(default_bin if default_bin.exists() else ROOT / "target/debug/distilserve"))
    p.add_argument("--data", default=None, help="data set folder (default: the head's)")
    p.add_argument("--tolerance", type=float, default=0.01)
    a, extra = p.parse_known_args()

    head = json.loads(Path(a.head).read_text())
    pooling, alpha = head["pooling"], head["training"]["alpha"]
    data = a.data or head["training"]["data_dir"]
    head_acc = head["metrics"]["test"]["accuracy"]
    # A head chosen between two graphs of the model (classify.model_file) is
    # compared on the features of the graph it was trained on.
    graph = (head["training"].get("graph_choice") or {}).get("served_on")
    if graph:
        extra = extra + ["--model-file", graph]
    cross_validated = "cross_validation" in json.dumps(head["training"]["selection"])

    with tempfile.TemporaryDirectory() as tmp:
        f = extract(a.bin, data, pooling, Path(tmp) / pooling, extra, layers_spec(head))
        fit_x, fit_y = f["train"]
        if cross_validated:  # the head's final fit used train and validation
            fit_x = np.concatenate([fit_x, f["validation"][0]])
            fit_y = np.concatenate([fit_y, f["validation"][1]])
        scaler = StandardScaler().fit(fit_x)
        # linfa's two-class multinomial penalises both class vectors: alpha/4 |w|^2
        # on the difference vector, i.e. scikit-learn's C = 2 / alpha.
        clf = LogisticRegression(C=2.0 / alpha, max_iter=5000).fit(scaler.transform(fit_x), fit_y)
        test_x, test_y = f["test"]
        sk_acc = clf.score(scaler.transform(test_x), test_y)

        lecture = {}
        for p_name in ("cls", "mean"):
            g = extract(a.bin, data, p_name, Path(tmp) / p_name, extra)
            lecture[p_name] = LogisticRegression(max_iter=3000).fit(*g["train"]).score(*g["test"])

    print(f"head {head['name']}: {pooling} pooling of layers {layers_spec(head)}, alpha {alpha}, "
          f"fitted on {len(fit_y)} texts")
    print(f"  distilserve (linfa) test accuracy   {head_acc:.4f}")
    print(f"  scikit-learn, same protocol         {sk_acc:.4f}")
    print(f"  difference                          {abs(head_acc - sk_acc) * 100:.2f} points (tolerance {a.tolerance * 100:.0f})")
    print("lecture recipe, LogisticRegression() on raw train features:")
    for p_name, acc in lecture.items():
        print(f"  {p_name:<5} test accuracy {acc:.4f}")
    sys.exit(0 if abs(head_acc - sk_acc) <= a.tolerance else 1)


if __name__ == "__main__":
    main()
