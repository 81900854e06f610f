"""The client libraries people already have, against the real service.

Runs every README and docs/clients.md snippet marked `<!-- client: NAME -->` as it is written (the
base URL replaced by the test server's), then checks what it produced: vectors
equal to `/embed`'s pooled ones (cosine > 0.9999), labels equal to
`/classify`'s. Then the wire details the snippets do not show: `/embeddings`
without `/v1`, base64 against float byte for byte, token-id inputs, corpus-sized
requests in the clients' default chunks (LangChain 1,000 texts, OpenAI 2,048),
`usage`, and refusals the SDKs parse.

    python tests/clients/test_clients.py --url http://127.0.0.1:PORT [--corpus 5000]

`--corpus N` also embeds N Rotten Tomatoes sentences through LangChain, the
OpenAI SDK and `/embed`, one after the other, and prints time and throughput
(the figures of the closing note; `make bench-clients`). Exits non-zero on the
first failed check.
"""

import argparse
import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
README_URL = "http://localhost:8080"


def post(url, body):
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def snippets(*pages):
    """(name, language, code) of each block marked `<!-- client: NAME -->` in the pages."""
    found = [
        snippet
        for page in pages
        for snippet in re.findall(r"<!-- client: ([\w-]+) -->\n```(python|js)\n(.*?)```", page.read_text(), re.S)
    ]
    assert len(found) >= 8, f"the README and docs/clients.md have {len(found)} client snippets"
    return found


def run_js(name, code):
    """Runs a JavaScript snippet with Node where scripts/clients-env.sh installed
    the SDK ($DISTILSERVE_CACHE/clients-node, beside this venv); returns its `vectors`."""
    node_dir = Path(sys.prefix).parent / "clients-node"
    assert (node_dir / "node_modules/openai").is_dir(), f"{node_dir}: run scripts/clients-env.sh"
    script = node_dir / f"snippet-{name}.mjs"
    script.write_text(code + "\nconsole.log(JSON.stringify({ vectors }));\n")
    out = subprocess.run(["node", str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{name}: {out.stderr}"
    return json.loads(out.stdout.strip().splitlines()[-1])


class Reference:
    """What the service's own routes answer, to check the clients against."""

    def __init__(self, url):
        self.url = url

    def vectors(self, texts):
        body = post(f"{self.url}/embed", {"inputs": texts, "pooling": "mean", "normalize": True})
        return np.array(body["embeddings"], dtype=np.float32), body["token_counts"]

    def label(self, text, head):
        return post(f"{self.url}/classify", {"inputs": [text], "head": head})["predictions"][0]


def cosines(got, want):
    got = np.asarray(got, dtype=np.float32).reshape(len(want), -1)
    got = got / np.linalg.norm(got, axis=1, keepdims=True)
    return (got * want).sum(axis=1)


def check_vectors(name, got, texts, reference):
    want, _ = reference.vectors(texts)
    worst = cosines(got, want).min()
    assert worst > 0.9999, f"{name}: cosine {worst} to /embed"
    return worst


def run_snippets(url, reference):
    texts = ["a gripping, funny film", "dull"]
    for name, language, code in snippets(REPO / "README.md", REPO / "docs/clients.md"):
        scope = {}
        started = time.perf_counter()
        if language == "js":
            scope = run_js(name, code.replace(README_URL, url))
        else:
            exec(compile(code.replace(README_URL, url), f"snippet:{name}", "exec"), scope)
        took = (time.perf_counter() - started) * 1000
        checked = []
        if "vectors" in scope:
            checked.append(f"cosine {check_vectors(name, scope['vectors'], texts, reference):.6f}")
        if "vector" in scope:
            got = np.asarray(scope["vector"], dtype=np.float32)
            assert got.shape == (384,), f"{name}: shape {got.shape}"
            checked.append(f"cosine {check_vectors(name, [got], texts[:1], reference):.6f}")
        if "labels" in scope:
            want = reference.label(texts[0], "sentiment")
            top = scope["labels"][0]
            assert top.label == want["label"], f"{name}: {top.label} vs /classify {want['label']}"
            assert abs(top.score - want["probability"]) < 1e-6, f"{name}: {top.score} vs {want['probability']}"
            assert {l.label for l in scope["labels"]} == set(want["probabilities"]), name
            checked.append(f"label {top.label}")
        if "prediction" in scope:
            want = reference.label(texts[0], "sentiment")
            got = scope["prediction"]
            assert got["label"] == want["label"], f"{name}: {got['label']} vs /classify {want['label']}"
            assert abs(got["probability"] - want["probability"]) < 1e-6, f"{name}: {got} vs {want}"
            checked.append(f"prediction {got['label']}")
        assert checked, f"{name}: the snippet defines none of vectors, vector, labels, prediction"
        print(f"client {name}: {', '.join(checked)} ({took:.0f} ms)")


def check_wire(url, reference):
    import openai
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import HfHubHTTPError

    texts = ["a gripping, funny film", "dull", "the acting is wooden"]
    want, counts = reference.vectors(texts)

    # No /v1 in the base URL: POST /embeddings.
    bare = openai.OpenAI(base_url=url, api_key="unused")
    response = bare.embeddings.create(model="m", input=texts)
    assert cosines([d.embedding for d in response.data], want).min() > 0.9999
    assert response.usage.prompt_tokens == sum(counts), (response.usage, counts)
    assert response.model == "m"

    # The SDK asks for base64 by default and decodes it; floats must be the same numbers.
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    decoded = np.array([d.embedding for d in client.embeddings.create(model="m", input=texts).data], np.float32)
    floats = np.array(
        [d.embedding for d in client.embeddings.create(model="m", input=texts, encoding_format="float").data],
        np.float32,
    )
    assert np.array_equal(decoded, floats), "base64 and float answers differ"
    print("openai: /embeddings without /v1, usage, base64 == float byte for byte")

    # The model's own token ids (as /tokenize gives them) embed like the text.
    ids = [t["id"] for t in post(f"{url}/tokenize", {"inputs": texts[0]})["tokens"][0]]
    by_ids = client.embeddings.create(model="m", input=[ids]).data[0].embedding
    assert np.array_equal(np.array(by_ids, np.float32), floats[0]), "token ids embed differently"
    print(f"openai: token ids {ids} embed as the text")

    # Refusals the SDK parses: status, code and message.
    try:
        client.embeddings.create(model="m", input=["x"] * 2049)
        raise AssertionError("2,049 inputs were accepted")
    except openai.APIStatusError as e:
        assert e.status_code == 413 and e.code == "too_many_inputs", (e.status_code, e.code)
        assert "2048" in e.message, e.message
    try:
        client.embeddings.create(model="m", input=[[10**8]])
        raise AssertionError("an id outside the vocabulary was accepted")
    except openai.UnprocessableEntityError as e:
        assert e.code == "invalid_input", e.code
    print("openai: 413 too_many_inputs and 422 invalid_input parsed by the SDK")

    # TEI's refusal of an over-long input without truncate, and its error body.
    tei = InferenceClient(model=f"{url}/tei")
    try:
        tei.feature_extraction("word " * 600, truncate=False)
        raise AssertionError("an over-long input was accepted with truncate=False")
    except HfHubHTTPError as e:
        assert e.response.status_code == 413, e.response.status_code
        assert e.response.json()["error_type"] == "Validation", e.response.text
    cut = tei.feature_extraction("word " * 600, truncate=True)
    assert cut.shape == (1, 384), cut.shape
    unit = tei.feature_extraction(texts[0], normalize=False)
    assert abs(float(np.linalg.norm(unit)) - 1.0) > 1e-3, "normalize=False gave a unit vector"
    print("huggingface_hub: truncate=False 413 Validation, truncate=True, normalize=False")


def corpus_texts(n):
    texts = []
    for split in ["train", "validation", "test"]:
        for line in (REPO / f"data/rotten_tomatoes/{split}.jsonl").read_text().splitlines():
            texts.append(json.loads(line)["text"])
    # Distinct texts: a repeated one would test nothing more.
    texts = list(dict.fromkeys(texts))
    assert len(texts) >= n, f"only {len(texts)} sentences"
    return texts[:n]


def check_corpus(url, reference, langchain_n, openai_n):
    """Corpus-sized requests in the clients' default chunks: no error, right vectors."""
    import openai
    from langchain_openai import OpenAIEmbeddings

    texts = corpus_texts(max(langchain_n, openai_n))
    sample = [0, 999, 1000, len(texts[:langchain_n]) - 1]
    want, _ = reference.vectors([texts[i] for i in sample])

    embeddings = OpenAIEmbeddings(
        base_url=f"{url}/v1", api_key="unused", model="m", check_embedding_ctx_length=False
    )
    started = time.perf_counter()
    vectors = embeddings.embed_documents(texts[:langchain_n])
    took = time.perf_counter() - started
    assert len(vectors) == langchain_n
    assert cosines([vectors[i] for i in sample], want).min() > 0.9999
    print(f"langchain: {langchain_n} texts (chunks of {embeddings.chunk_size}) in {took:.1f} s")

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    started = time.perf_counter()
    response = client.embeddings.create(model="m", input=texts[:openai_n])
    took = time.perf_counter() - started
    assert len(response.data) == openai_n and [d.index for d in response.data] == list(range(openai_n))
    got = [response.data[i].embedding for i in sample]
    assert cosines(got, want).min() > 0.9999
    print(f"openai: {openai_n} texts in one request in {took:.1f} s")


def bench_corpus(url, n):
    """N texts through LangChain, the OpenAI SDK (2,048 a request) and /embed (256 a request)."""
    import openai
    from langchain_openai import OpenAIEmbeddings

    texts = corpus_texts(n)
    runs = {}
    embeddings = OpenAIEmbeddings(base_url=f"{url}/v1", api_key="unused", model="m", check_embedding_ctx_length=False)
    started = time.perf_counter()
    assert len(embeddings.embed_documents(texts)) == n
    runs["langchain-openai (chunks of 1,000)"] = time.perf_counter() - started

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    started = time.perf_counter()
    got = 0
    for i in range(0, n, 2048):
        got += len(client.embeddings.create(model="m", input=texts[i : i + 2048]).data)
    assert got == n
    runs["openai SDK (2,048 a request)"] = time.perf_counter() - started

    started = time.perf_counter()
    got = 0
    for i in range(0, n, 256):
        got += len(post(f"{url}/embed", {"inputs": texts[i : i + 256], "pooling": "mean"})["embeddings"])
    assert got == n
    runs["/embed pooled (256 a request)"] = time.perf_counter() - started

    baseline = runs["/embed pooled (256 a request)"]
    for name, took in runs.items():
        print(f"corpus {n}: {name}: {took:.1f} s, {n / took:.0f} texts/s, x{baseline / took:.2f} of /embed")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--langchain-texts", type=int, default=1200)
    parser.add_argument("--openai-texts", type=int, default=2048)
    parser.add_argument("--corpus", type=int, default=0, help="only the corpus benchmark, with N texts")
    args = parser.parse_args()
    url = args.url.rstrip("/")
    reference = Reference(url)
    if args.corpus:
        bench_corpus(url, args.corpus)
        return
    run_snippets(url, reference)
    check_wire(url, reference)
    check_corpus(url, reference, args.langchain_texts, args.openai_texts)
    print("clients: all checks passed")


if __name__ == "__main__":
    sys.exit(main())
