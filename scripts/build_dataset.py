#!/usr/bin/env python3
"""Build data/rotten_tomatoes from the vaderSentiment 3.3.2 sdist (stdlib only).

    build_dataset.py SDIST OUT_DIR     build
    build_dataset.py --check OUT_DIR   exit 0 when OUT_DIR holds the expected splits

movieReviewSnippets_GroundTruth.txt keeps the original rt-polarity order: ids
1-5152 are the positive sentences, 5153-10312 the negative ones, and 10313-10605 a
mixed tail that is dropped. Each class is split by position as the
`rotten_tomatoes` data set does: first 80% train, next 10% validation, last 10%
test. Labels: 0 = neg, 1 = pos.
"""
import io
import json
import os
import sys
import tarfile
from pathlib import Path

EXPECTED = {"train": 8250, "validation": 1031, "test": 1031}
LABELS = ["neg", "pos"]
MEMBER_SUFFIX = "additional_resources/hutto_ICWSM_2014.tar.gz"
SNIPPETS = "movieReviewSnippets_GroundTruth.txt"


def read_snippets(sdist: str) -> list[str]:
    with tarfile.open(sdist) as outer:
        inner_member = next(m for m in outer.getmembers() if m.name.endswith(MEMBER_SUFFIX))
        inner_bytes = outer.extractfile(inner_member).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        m = next(m for m in inner.getmembers() if m.name.endswith(SNIPPETS))
        return inner.extractfile(m).read().decode("utf-8").splitlines()


def split(rows: list) -> dict:
    # Validation and test each take round(10%) of the class, train the rest:
    # 4,122 / 515 / 515 positive and 4,128 / 516 / 516 negative.
    tenth = round(len(rows) * 0.1)
    a, b = len(rows) - 2 * tenth, len(rows) - tenth
    return {"train": rows[:a], "validation": rows[a:b], "test": rows[b:]}


def build(sdist: str, out: Path) -> None:
    pos, neg = [], []
    for line in read_snippets(sdist):
        if not line.strip():
            continue
        ident, _rating, text = line.split("\t", 2)
        ident = int(ident)
        text = text.strip()
        if 1 <= ident <= 5152:
            pos.append(text)
        elif 5153 <= ident <= 10312:
            neg.append(text)
    if (len(pos), len(neg)) != (5152, 5160):
        sys.exit(f"unexpected class sizes {len(pos)} / {len(neg)}")
    out.mkdir(parents=True, exist_ok=True)
    sp, sn = split(pos), split(neg)
    counts = {}
    for name in ("train", "validation", "test"):
        rows = [{"text": t, "label": 0} for t in sn[name]] + [{"text": t, "label": 1} for t in sp[name]]
        tmp = out / f"{name}.jsonl.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, out / f"{name}.jsonl")
        counts[name] = len(rows)
    if counts != EXPECTED:
        sys.exit(f"unexpected split sizes {counts}, expected {EXPECTED}")
    meta = {
        "name": "rotten_tomatoes",
        "labels": LABELS,
        "splits": counts,
        "source": "PyPI vaderSentiment==3.3.2 sdist, additional_resources/hutto_ICWSM_2014.tar.gz",
        "citation": "Pang & Lee 2005 (sentence polarity v1.0); Hutto & Gilbert 2014 (VADER)",
        "license": "MIT (vaderSentiment package)",
    }
    (out / "meta.json.tmp").write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(out / "meta.json.tmp", out / "meta.json")
    print(f"[setup] data set written to {out}: {counts}", file=sys.stderr)


def check(out: Path) -> bool:
    try:
        for name, n in EXPECTED.items():
            with open(out / f"{name}.jsonl", encoding="utf-8") as f:
                if sum(1 for _ in f) != n:
                    return False
        return json.loads((out / "meta.json").read_text())["labels"] == LABELS
    except (OSError, ValueError, KeyError):
        return False


if __name__ == "__main__":
    if sys.argv[1] == "--check":
        sys.exit(0 if check(Path(sys.argv[2])) else 1)
    build(sys.argv[1], Path(sys.argv[2]))
