"""How much a text's /classify answer depends on the texts it shares a batch
with (on the int8 graph, activations are quantised with one scale per model
call, so neighbours move it a little; on fp32 nothing should).

  python3 bench/batch_dependence.py --port PORT [--texts 200] [--head sentiment]

Against a running service: each of the first --texts Rotten Tomatoes test
sentences alone (one request, one text), then in requests of 32 texts (itself
and 31 others); prints the largest and mean difference of the top probability
and how many labels changed.
"""
import argparse, http.client, json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def classify(port, texts, head):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request("POST", "/classify", json.dumps({"inputs": texts, "head": head}).encode(), {"content-type": "application/json"})
    r = c.getresponse(); body = json.loads(r.read())
    assert r.status == 200, body
    return body


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--texts", type=int, default=200)
    p.add_argument("--head", default="sentiment")
    a = p.parse_args()
    sentences = [json.loads(l)["text"] for l in open(ROOT / "data/rotten_tomatoes/test.jsonl")]
    texts = sentences[:a.texts]
    alone = [classify(a.port, [t], a.head)["predictions"][0] for t in texts]
    together = []
    for i in range(0, len(texts), 32):
        together += classify(a.port, texts[i:i + 32], a.head)["predictions"]
    graph = classify(a.port, [texts[0]], a.head)["encoder_fingerprint"][:12]
    diffs = [max(abs(x["probabilities"][k] - y["probabilities"][k]) for k in x["probabilities"]) for x, y in zip(alone, together)]
    flips = sum(x["label"] != y["label"] for x, y in zip(alone, together))
    print(f"encoder {graph}: {len(texts)} texts alone vs in batches of 32: probability difference "
          f"max {max(diffs):.2e}, mean {sum(diffs) / len(diffs):.2e}; labels changed: {flips}")


if __name__ == "__main__":
    main()
