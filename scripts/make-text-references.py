#!/usr/bin/env python3
"""Reference embeddings for the Rust text encoders, from independent implementations.

- MiniLM: the official `sentence-transformers` pipeline (Transformer -> mean Pooling ->
  Normalize) on models/all-MiniLM-L6-v2, plus the token ids of its tokenizer.
- SmolLM2: Hugging Face `transformers` loading the same GGUF file (`gguf_file=`), which
  dequantizes the Q4_1/Q8_0 tensors to float32 and undoes llama.cpp's Q/K permutation itself.
  Each prompt is tokenized without special tokens, `<|im_end|>` (eos, id 2) is appended, and
  the final hidden state (`last_hidden_state`, after the final RMSNorm) at that eos is stored,
  together with the mean over all tokens of the same states.
- Long texts (`long_items`): templated scene descriptions of about 100 to 1,000 tokens, as LIFT's
  recaptions are, embedded at each encoder's own limit (MiniLM: sentence-transformers' default
  `max_seq_length`, 256; SmolLM2: untruncated), plus one text of over 2,048 tokens for SmolLM2.

Writes tests/fixtures/text/{minilm,smollm2}.json. Run once after scripts/fetch-models:

    python3 -m venv .venv && .venv/bin/pip install torch sentence-transformers transformers gguf accelerate
    .venv/bin/python scripts/make-text-references.py
"""

import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.environ.get("ABLATE_MODELS", os.path.join(ROOT, "models"))
OUT = os.path.join(ROOT, "tests", "fixtures", "text")

SENTENCES = [
    "A photo of a dog.",
    "a red cube to the left of a blue sphere",
    "Two men are playing frisbee in a park while a dog watches.",
    "The quick brown fox jumps over the lazy dog.",
    "A man riding a horse on a beach at sunset.",
    "A horse riding a man on a beach at sunset.",
    "There are 3 cats and 12 dogs in the picture, taken in 2019.",
    "Café au lait, crème brûlée, and naïve résumé writing.",
    "東京の夜景はとても美しい。",
    "Ein Hund läuft über die Wiese.",
    "An astronaut 👩‍🚀 floating above Earth 🌍!",
    "",
    "   leading and trailing spaces   ",
    "ALL CAPS HEADLINE: MARKETS RALLY AS RATES FALL",
    "C++ and Rust: memory-safe systems programming (2024 edition).",
    "email me at someone@example.com or visit https://example.org/path?q=1",
    "a small yellow triangle above a large green square",
    "a large green square above a small yellow triangle",
    "unbelievably unconstitutional antidisestablishmentarianism",
    "Question: what is the capital of France? Answer: Paris.",
    "The cat sat on the mat. " * 40,  # longer than max_tokens: truncated
    "A close-up of a plate with broccoli, carrots & rice; served hot.",
]

PROMPTS = [
    "A photo of a dog.",
    "a red cube to the left of a blue sphere",
    "A man riding a horse on a beach at sunset.",
    "There are 3 cats and 12 dogs in the picture.",
    "Café au lait and crème brûlée 🍮",
    "Question: what is the capital of France? Answer: Paris.",
    "",
]


# Token targets of the long texts (MiniLM word pieces, without [CLS]/[SEP]).
LONG_TARGETS = [100, 180, 300, 520, 1000]
# The decoder must embed at least 2,048 tokens.
DECODER_LONG_TARGET = 2100


def long_texts(count_tokens, targets):
    """Deterministic scene descriptions, grown sentence by sentence until each
    reaches its token target: varied words, numbers, punctuation and accents."""
    import random

    rng = random.Random(2026)
    colours = ["red", "blue", "green", "yellow", "purple", "orange", "grey", "teal", "crimson", "beige"]
    sizes = ["small", "large", "tiny", "huge", "medium-sized"]
    things = ["cube", "sphere", "cylinder", "cone", "triangle", "square", "mug", "bicycle", "lamp", "café table"]
    relations = ["to the left of", "to the right of", "above", "below", "behind", "in front of", "next to", "on top of"]
    extras = [
        "The lighting is soft and comes from a window on the left.",
        "In the background, a blurred city skyline is visible at dusk.",
        "The photo was taken in 2019 with a 35 mm lens.",
        "A caption printed underneath reads: \"Still life, no. 7\".",
        "Shadows fall diagonally across the wooden floor.",
        "Nothing else in the scene is moving; it looks like a studio set-up.",
    ]
    texts = []
    for target in targets:
        parts = []
        while True:
            if rng.random() < 0.25:
                parts.append(rng.choice(extras))
            else:
                a = (rng.choice(sizes), rng.choice(colours), rng.choice(things))
                b = (rng.choice(sizes), rng.choice(colours), rng.choice(things))
                n = rng.randint(2, 12)
                parts.append(
                    f"A {' '.join(a)} sits {rng.choice(relations)} a {' '.join(b)}, and {n} {rng.choice(colours)} "
                    f"{rng.choice(things)}s are scattered around them."
                )
            text = " ".join(parts)
            if count_tokens(text) >= target:
                texts.append(text)
                break
    return texts


def floats(t):
    return [float(f"{x:.7g}") for x in t.tolist()]


def minilm():
    from sentence_transformers import SentenceTransformer

    path = os.path.join(MODELS, "all-MiniLM-L6-v2")
    model = SentenceTransformer(path, device="cpu")
    items = []
    for max_tokens in (256, 16):
        model.max_seq_length = max_tokens
        emb = model.encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=False, batch_size=8)
        for text, e in zip(SENTENCES, emb):
            ids = model.tokenizer(text, truncation=True, max_length=max_tokens)["input_ids"]
            items.append({"text": text, "max_tokens": max_tokens, "tokens": ids, "embedding": floats(e)})
    # Long texts at sentence-transformers' default truncation (the model's max_seq_length).
    model = SentenceTransformer(path, device="cpu")
    count = lambda t: len(model.tokenizer(t, add_special_tokens=False)["input_ids"])
    texts = long_texts(count, LONG_TARGETS)
    emb = model.encode(texts, convert_to_tensor=True, normalize_embeddings=False, batch_size=8)
    long_items = []
    for text, e in zip(texts, emb):
        ids = model.tokenizer(text, truncation=True, max_length=model.max_seq_length)["input_ids"]
        long_items.append(
            {"text": text, "max_tokens": model.max_seq_length, "full_tokens": count(text) + 2, "tokens": ids, "embedding": floats(e)}
        )
    return {
        "reference": "sentence-transformers %s (Transformer, mean Pooling, Normalize), torch %s"
        % (__import__("sentence_transformers").__version__, torch.__version__),
        "model": "all-MiniLM-L6-v2",
        "pooling": "mean",
        "normalized": True,
        "items": items,
        "long_items": long_items,
    }


def smollm2():
    import transformers
    from transformers import AutoModel, AutoTokenizer

    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(MODELS, gguf_file=name)
    model = AutoModel.from_pretrained(MODELS, gguf_file=name, torch_dtype=torch.float32)
    model.eval()
    eos = 2
    items = []
    from transformers import AutoTokenizer as _T

    wordpieces = _T.from_pretrained(os.path.join(MODELS, "all-MiniLM-L6-v2"))
    count = lambda t: len(wordpieces(t, add_special_tokens=False)["input_ids"])
    long = long_texts(count, LONG_TARGETS + [DECODER_LONG_TARGET])
    long_items = []
    with torch.no_grad():
        for group, texts in ((items, PROMPTS), (long_items, long)):
            for text in texts:
                ids = tok(text, add_special_tokens=False)["input_ids"] + [eos]
                out = model(input_ids=torch.tensor([ids]))
                h = out.last_hidden_state[0]
                group.append({"text": text, "tokens": ids, "eos": floats(h[-1]), "mean": floats(h.mean(0))})
    return {
        "reference": "transformers %s loading the GGUF with gguf_file=, float32, torch %s; "
        "hidden states after the final RMSNorm" % (transformers.__version__, torch.__version__),
        "model": name,
        "eos_token_id": eos,
        "items": items,
        "long_items": long_items,
    }


def main():
    torch.set_grad_enabled(False)
    os.makedirs(OUT, exist_ok=True)
    which = sys.argv[1:] or ["minilm", "smollm2"]
    for key in which:
        data = {"minilm": minilm, "smollm2": smollm2}[key]()
        path = os.path.join(OUT, key + ".json")
        with open(path, "w") as f:
            json.dump(data, f, ensure_ascii=False, separators=(",", ":"))
            f.write("\n")
        print(f"wrote {path}: {len(data['items'])} items")


if __name__ == "__main__":
    main()
