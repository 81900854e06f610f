#!/usr/bin/env python3
"""Regenerate the small model fixtures committed under tests/fixtures/.

    scripts/python-env.sh  # once, then:
    ~/.cache/distilserve/venv/bin/python scripts/make_fixtures.py

Each fixture is a random-weight Hugging Face model with tiny dimensions, exported
by the same code as real models (export_model.py), so the ONNX graphs have the
real architectures' inputs and outputs:
  tiny-distilbert       DistilBertModel: input_ids, attention_mask -> last_hidden_state
  tiny-bert             BertModel: also token_type_ids
  tiny-distilbert-sst2  DistilBertForSequenceClassification: -> logits (2 labels)
Weights are drawn with a large initializer range (0.3) so that outputs differ
clearly between tokens and texts, and a padding or masking bug shows. A small
WordPiece vocabulary (uncased, BERT normalisation and pre-tokenisation)
keeps them to a few hundred kilobytes. expected.json holds Python onnxruntime's
outputs for a few texts, every layer's hidden states included: the Rust
encoder must match them.
"""
import json
import string
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from export_model import export  # noqa: E402
from reference import reference_outputs  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
MAX_POSITIONS = 64
WORDS = """the a an and or but not no is was are be film movie story funny dull boring
great good bad gripping plot actors acting script it this that of to in on with for as
at by from its his her their one two very too so more most than just like love hate
best worst fun sad happy long short slow fast hello world""".split()
TEXTS = [
    "a gripping, funny film",
    "dull",
    "Hello, world! The plot is too slow and the acting is bad.",
    "Café naïve résumé 😀 — unknown glyphs ✓",
    " ".join(["the movie is good and the story is great"] * 8),  # longer than 64 tokens
]


def build_tokenizer(dest: Path):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = specials + chars + ["##" + c for c in string.ascii_lowercase + string.digits] + WORDS
    vocab = list(dict.fromkeys(vocab))
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=None, clean_text=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   model_max_length=MAX_POSITIONS)
    fast.save_pretrained(dest)
    return fast, len(vocab)


def make(name: str, model, hf_dir: Path, task: str) -> None:
    model.save_pretrained(hf_dir)
    out = ROOT / name
    export(str(hf_dir), out, name, task, int8=False, fused=False, opset=17,
           source_info={"generator": "scripts/make_fixtures.py", "weights": "random, seed 0"})
    ref = reference_outputs(out, TEXTS, layers=True)
    (out / "expected.json").write_text(json.dumps(ref) + "\n")
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"[fixtures] {name}: {size / 1024:.0f} KiB", file=sys.stderr)


def main() -> None:
    from transformers import (BertConfig, BertModel, DistilBertConfig,
                              DistilBertForSequenceClassification, DistilBertModel)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fast, vocab_size = build_tokenizer(tmp / "tok")
        distil_cfg = dict(vocab_size=vocab_size, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                          max_position_embeddings=MAX_POSITIONS, pad_token_id=0,
                          initializer_range=0.3)
        specs = [
            ("tiny-distilbert", lambda: DistilBertModel(DistilBertConfig(**distil_cfg)),
             "feature-extraction"),
            ("tiny-bert", lambda: BertModel(BertConfig(
                vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=MAX_POSITIONS, type_vocab_size=2,
                pad_token_id=0, initializer_range=0.3), add_pooling_layer=False), "feature-extraction"),
            ("tiny-distilbert-sst2", lambda: DistilBertForSequenceClassification(DistilBertConfig(
                **distil_cfg, num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"},
                label2id={"NEGATIVE": 0, "POSITIVE": 1})), "sequence-classification"),
        ]
        for name, build, task in specs:
            torch.manual_seed(0)
            model = build().eval()
            hf_dir = tmp / name
            fast.save_pretrained(hf_dir)
            make(name, model, hf_dir, task)


if __name__ == "__main__":
    main()
