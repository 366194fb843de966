#!/usr/bin/env python3
"""The model reference fixture (tests/fixtures/model/vit.safetensors): a
small ViT + projection head built in PyTorch (scripts/bench-train-reference.py's
model), randomly initialised, saved under ablate's export names with a batch
of images and the embeddings PyTorch computes for them. tests/model.rs loads
the weights into ablate's burn model and must reproduce the embeddings.

    python3 scripts/make-model-references.py
"""
import json
import sys
from importlib import import_module

import numpy as np
import torch
from safetensors.numpy import save_file

sys.path.insert(0, __file__.rsplit("/", 1)[0])
ref = import_module("bench-train-reference")

SIZE, PATCH, WIDTH, DEPTH, HEADS, DIM = 32, 8, 32, 2, 2, 48


def main():
    torch.manual_seed(0)
    model = ref.Tower(SIZE, PATCH, WIDTH, DEPTH, HEADS, DIM)
    with torch.no_grad():  # LayerNorms and biases away from their init, so the test sees them
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    images = torch.randint(0, 256, (4, SIZE, SIZE, 3), dtype=torch.uint8)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    x = (images.permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        expected = model(x)
    s = {k: v.detach() for k, v in model.state_dict().items()}
    out = {
        "visual.patch_embed.weight": s["patch_embed.weight"].reshape(WIDTH, -1),
        "visual.patch_embed.bias": s["patch_embed.bias"],
        "visual.pos_embed": s["pos_embed"],
        "visual.ln_post.weight": s["ln_post.weight"],
        "visual.ln_post.bias": s["ln_post.bias"],
        "projector.fc1.weight": s["fc1.weight"],
        "projector.fc1.bias": s["fc1.bias"],
        "projector.fc2.weight": s["fc2.weight"],
        "projector.fc2.bias": s["fc2.bias"],
    }
    for i in range(DEPTH):
        for ours, theirs in [("ln_1", "ln_1"), ("ln_2", "ln_2"), ("attn.q", "q"), ("attn.k", "k"), ("attn.v", "v"),
                             ("attn.out", "out"), ("mlp.fc", "fc"), ("mlp.proj", "proj")]:
            for t in ["weight", "bias"]:
                out[f"visual.blocks.{i}.{ours}.{t}"] = s[f"blocks.{i}.{theirs}.{t}"]
    tensors = {k: v.numpy().astype(np.float32).copy() for k, v in out.items()}
    tensors["input.images"] = images.numpy()
    tensors["expected.embeddings"] = expected.numpy().astype(np.float32)
    config = {
        "vit": {"name": "reference", "image_size": SIZE, "patch_size": PATCH, "width": WIDTH, "depth": DEPTH, "heads": HEADS,
                "mlp_ratio": 4, "pooling": "avg"},
        "projector_layers": 2, "embed_dim": DIM, "text": None, "vocab_size": 0, "logit_scale": None, "logit_bias": None,
    }
    save_file(tensors, "tests/fixtures/model/vit.safetensors", metadata={"config": json.dumps(config), "torch": torch.__version__})
    print("wrote tests/fixtures/model/vit.safetensors")


if __name__ == "__main__":
    main()
