#!/usr/bin/env python3
"""Loads a `train` instance's image_encoder.safetensors into a plain PyTorch
ViT (the model of scripts/bench-train-reference.py) and checks that it
embeds the evaluated images as ablate did (the `evaluate` instance's
embeddings.safetensors): the exported weights are PyTorch-loadable and mean
what the docs say.

    python3 scripts/check-export.py IMAGE_ENCODER EVAL_EMBEDDINGS INGEST_IMAGES

(paths from `ablate show KEY`). Needs torch, numpy and safetensors.
"""
import json
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.numpy import load_file

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from importlib import import_module

ref = import_module("bench-train-reference")


def main():
    weights_path, eval_path, images_path = sys.argv[1:4]
    with safe_open(weights_path, "np") as f:
        config = json.loads(f.metadata()["config"])
    weights = {k: torch.from_numpy(v) for k, v in load_file(weights_path).items()}
    vit = config["vit"]
    assert vit["pooling"] == "avg" and config["projector_layers"] == 2, "this check covers the default avg pooling, 2-layer head"
    model = ref.Tower(vit["image_size"], vit["patch_size"], vit["width"], vit["depth"], vit["heads"], config["embed_dim"])
    p = vit["patch_size"]
    state = {
        "patch_embed.weight": weights["visual.patch_embed.weight"].reshape(vit["width"], 3, p, p),
        "patch_embed.bias": weights["visual.patch_embed.bias"],
        "pos_embed": weights["visual.pos_embed"],
        "ln_post.weight": weights["visual.ln_post.weight"],
        "ln_post.bias": weights["visual.ln_post.bias"],
        "fc1.weight": weights["projector.fc1.weight"],
        "fc1.bias": weights["projector.fc1.bias"],
        "fc2.weight": weights["projector.fc2.weight"],
        "fc2.bias": weights["projector.fc2.bias"],
        "logit_scale": weights.get("logit_scale", model.logit_scale.data),
    }
    for i in range(vit["depth"]):
        b = f"visual.blocks.{i}."
        for ours, theirs in [("ln_1", "ln_1"), ("ln_2", "ln_2"), ("attn.q", "q"), ("attn.k", "k"), ("attn.v", "v"),
                             ("attn.out", "out"), ("mlp.fc", "fc"), ("mlp.proj", "proj")]:
            for t in ["weight", "bias"]:
                state[f"blocks.{i}.{theirs}.{t}"] = weights[f"{b}{ours}.{t}"]
    model.load_state_dict(state, strict=True)
    model.eval()
    ours = load_file(eval_path)
    images = load_file(images_path)["images"]  # [N, S, S, 3] uint8
    index = ours["image_index"]
    x = torch.from_numpy(images[index]).permute(0, 3, 1, 2).float() / 255
    assert x.shape[-1] == vit["image_size"], "ingest resolution must equal the model's for this check"
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        theirs = F.normalize(model((x - mean) / std), dim=-1).numpy()
    cos = (theirs * ours["images"]).sum(-1)
    print(f"{len(cos)} images: cosine(PyTorch, ablate) min {cos.min():.6f} mean {cos.mean():.6f}; max abs diff {np.abs(theirs - ours['images']).max():.2e}")
    assert cos.min() > 0.9999, "the exported weights do not reproduce ablate's embeddings"


if __name__ == "__main__":
    main()
