"""Run the smallest exported variant (`tlprune export DIR --trim-vocab --int8`) with ONNX
Runtime and the `tokenizers` library only: no tlprune, no transformers, no torch.

    pip install onnxruntime tokenizers numpy
    python examples/run_exported.py runs/main-trim "great phone, works well" "broke in a week"
"""

import json
import sys

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

model_dir, texts = sys.argv[1], sys.argv[2:] or ["great phone, works well"]
tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
tok.enable_padding()
tok.enable_truncation(128)
session = ort.InferenceSession(f"{model_dir}/model.int8.onnx", providers=["CPUExecutionProvider"])
enc = tok.encode_batch(texts)
feed = {
    "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
    "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
    "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
}
wanted = {i.name for i in session.get_inputs()}
logits = session.run(None, {k: v for k, v in feed.items() if k in wanted})[0]
with open(f"{model_dir}/config.json") as f:
    id2label = json.load(f)["id2label"]
for text, row in zip(texts, logits, strict=True):
    print(f"{id2label[str(int(row.argmax()))]}\t{text}")
