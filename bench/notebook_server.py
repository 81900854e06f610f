#!/usr/bin/env python3
"""The lecture's feature extraction, served the simplest way: the baseline that
bench/throughput/ measures distilserve against.

It does what the notebook does — transformers AutoModel + AutoTokenizer, torch
with no_grad, the last hidden state's [CLS] vector, scikit-learn's
LogisticRegression on those vectors — behind Python's threaded HTTP server.
Model calls are serialised with a lock (concurrent torch calls on the same
cores only slow each other down), and torch gets the same number of threads as
ONNX Runtime in distilserve.

    python bench/notebook_server.py --model HF_DIR --train data/rotten_tomatoes/train.jsonl --port 9000

POST /embed    {"inputs": [...]} -> {"embeddings": [[...], ...]}   ([CLS] vectors)
POST /classify {"inputs": [...]} -> {"predictions": [{"label": ..., "score": ...}]}
GET  /health   200 once the model is loaded and the classifier trained
"""
import argparse
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from transformers import AutoModel, AutoTokenizer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="Hugging Face model folder")
    p.add_argument("--train", required=True, help="JSONL with text and label, for the classifier")
    p.add_argument("--train-size", type=int, default=1000, help="training texts used (the baseline's startup time)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--port", type=int, default=9000)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    model = AutoModel.from_pretrained(a.model).eval()
    lock = threading.Lock()

    def cls_vectors(texts):
        with lock, torch.no_grad():
            inputs = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
            return model(**inputs).last_hidden_state[:, 0].numpy()

    rows = [json.loads(line) for line in open(a.train, encoding="utf-8")]
    rows = rows[:: max(1, len(rows) // a.train_size)][: a.train_size]  # spread over the file: it may be sorted
    features = np.concatenate([cls_vectors([r["text"] for r in rows[i:i + 32]]) for i in range(0, len(rows), 32)])
    classifier = LogisticRegression(max_iter=1000).fit(features, [r["label"] for r in rows])

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            super().setup()
            # Headers and body go out in two writes: without this, Nagle's algorithm and
            # the client's delayed ACK add ~40 ms to every response.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, *args):  # the benchmark's load would flood stderr
            pass

        def reply(self, status, obj):
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self.reply(200, {"status": "ok"}) if self.path == "/health" else self.reply(404, {"error": "not found"})

        def do_POST(self):
            try:
                texts = json.loads(self.rfile.read(int(self.headers["content-length"])))["inputs"]
                texts = [texts] if isinstance(texts, str) else texts
            except (ValueError, KeyError, TypeError) as e:
                return self.reply(400, {"error": str(e)})
            if self.path == "/embed":
                return self.reply(200, {"embeddings": cls_vectors(texts).tolist()})
            if self.path == "/classify":
                probs = classifier.predict_proba(cls_vectors(texts))
                return self.reply(200, {"predictions": [{"label": int(p.argmax()), "score": float(p.max())} for p in probs]})
            self.reply(404, {"error": "not found"})

    class Server(ThreadingHTTPServer):
        request_queue_size = 1024  # listen backlog: the default 5 drops bursts of connections

    server = Server(("127.0.0.1", a.port), Handler)
    server.daemon_threads = True
    print(f"notebook server ready on :{a.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
