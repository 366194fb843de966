#!/usr/bin/env python3
"""Python anchor for benches/text_encoders.rs: the same SugarCrepe captions, batch 64,
max 77 tokens, through sentence-transformers (MiniLM) and transformers (SmolLM2 GGUF,
eos pooling), on the CPU with as many torch threads as cores.

    .venv/bin/python scripts/bench-text-reference.py [minilm|smollm2] [N] [--threads T]

scripts/bench-text-vs-pytorch runs it interleaved with the Rust bench.
"""

import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.environ.get("ABLATE_MODELS", os.path.join(ROOT, "models"))
BATCH, MAX_TOKENS = 64, 77


def captions(n):
    out = []
    for subset in ["replace_obj", "replace_att", "replace_rel", "add_obj", "swap_att"]:
        with open(os.path.join(ROOT, "data", "sugarcrepe", subset + ".json")) as f:
            d = json.load(f)
        for k in sorted(d, key=int):
            if len(out) == n:
                return out
            out.append(d[k]["caption"])
    return out


def minilm(n):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(os.path.join(MODELS, "all-MiniLM-L6-v2"), device="cpu")
    model.max_seq_length = MAX_TOKENS
    texts = captions(n)
    model.encode(texts[:BATCH], batch_size=BATCH)
    t = time.perf_counter()
    model.encode(texts, batch_size=BATCH)
    return n / (time.perf_counter() - t)


def smollm2(n):
    from transformers import AutoModel, AutoTokenizer

    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(MODELS, gguf_file=name)
    model = AutoModel.from_pretrained(MODELS, gguf_file=name, dtype=torch.float32).eval()
    # Batches of similar length, as sentence-transformers and the Rust encoder do.
    texts = sorted(captions(n), key=len)

    def run(batch):
        ids = [tok(t, add_special_tokens=False)["input_ids"][: MAX_TOKENS - 1] + [2] for t in batch]
        seq = max(map(len, ids))
        inp = torch.tensor([x + [0] * (seq - len(x)) for x in ids])
        mask = torch.tensor([[1] * len(x) + [0] * (seq - len(x)) for x in ids])
        h = model(input_ids=inp, attention_mask=mask).last_hidden_state
        last = torch.tensor([len(x) - 1 for x in ids])
        e = h[torch.arange(len(ids)), last]
        return torch.nn.functional.normalize(e, dim=-1)

    with torch.no_grad():
        run(texts[:BATCH])
        t = time.perf_counter()
        for i in range(0, n, BATCH):
            run(texts[i : i + BATCH])
        return n / (time.perf_counter() - t)


def main():
    args = sys.argv[1:]
    if "--threads" in args:
        i = args.index("--threads")
        torch.set_num_threads(int(args[i + 1]))
        del args[i : i + 2]
    which = args[0] if args else None
    n = int(args[1]) if len(args) > 1 else None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if which in (None, "minilm"):
        c = n or 1024
        print(f"minilm   {c:5} captions  batch {BATCH}  {minilm(c):8.1f} captions/s  (sentence-transformers)")
    if which in (None, "smollm2"):
        c = n or 256
        print(f"smollm2  {c:5} captions  batch {BATCH}  {smollm2(c):8.1f} captions/s  (transformers, gguf_file=)")


if __name__ == "__main__":
    main()
