"""The export's int8 graph (outlier channels kept fp32, scripts/export_model.py) with another
threshold, for the study; the export itself uses OUTLIER_RATIO and OUTLIER_SHRINK.

  outlier_split.py MODEL_DIR OUT RATIO [N] [SHRINK]

N training sentences (default 200) find the outlier channels, one per call.
"""
import json, sys
from pathlib import Path
import numpy as np, onnx
from tokenizers import Tokenizer
from onnxruntime.quantization import quantize_dynamic
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from export_model import int8_args, split_outlier_channels

md, out, ratio = sys.argv[1], sys.argv[2], float(sys.argv[3])
n_sent = int(sys.argv[4]) if len(sys.argv) > 4 else 200
shrink = float(sys.argv[5]) if len(sys.argv) > 5 else 2.0
m = onnx.load(f"{md}/model.onnx")
names = {i.name for i in m.graph.input}
tok = Tokenizer.from_file(f"{md}/tokenizer.json"); tok.no_padding()
feeds = []
for line in list(open("data/rotten_tomatoes/train.jsonl"))[:n_sent]:
    ids = np.array([tok.encode(json.loads(line)["text"]).ids], np.int64)
    f = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    feeds.append({k: v for k, v in f.items() if k in names})
keep_fp32, summary = split_outlier_channels(m, feeds, ratio, shrink)
print(summary)
tmp = out + ".fp32.onnx"
onnx.save(m, tmp)
quantize_dynamic(tmp, out, nodes_to_exclude=keep_fp32, **int8_args())
print("wrote", out, "and", tmp)
