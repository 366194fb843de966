#!/usr/bin/env python3
"""The optimizer reference fixture (tests/fixtures/optim/adamw.json):
torch.optim.AdamW with CLIP's settings — β = (0.9, 0.98), ε = 1e-6, weight
decay 0.2 on the matrix only (not the bias or the logit scale) — plus
clip_grad_norm_ and a changing learning rate, for six steps of a small
least-squares problem in float64. tests/optim.rs runs ablate's AdamW on the
same problem and must land on the same parameters.

    python3 scripts/make-optim-references.py
"""
import json

import torch

torch.manual_seed(0)
torch.set_default_dtype(torch.float64)
x = torch.randn(5, 3)
y = torch.randn(5, 4)
w = torch.randn(3, 4, requires_grad=True)
b = torch.randn(4, requires_grad=True)
t = torch.tensor([0.5], requires_grad=True)
init = {"w": w.detach().clone(), "b": b.detach().clone(), "t": t.detach().clone()}
opt = torch.optim.AdamW([{"params": [w], "weight_decay": 0.2}, {"params": [b, t], "weight_decay": 0.0}],
                        lr=1.0, betas=(0.9, 0.98), eps=1e-6)
lrs = [0.05, 0.1, 0.08, 0.05, 0.02, 0.01]
clip = 1.5
norms = []
for lr in lrs:
    for g in opt.param_groups:
        g["lr"] = lr
    loss = ((x @ w + b) * t.exp() - y).pow(2).sum()
    opt.zero_grad()
    loss.backward()
    norms.append(float(torch.nn.utils.clip_grad_norm_([w, b, t], clip)))
    opt.step()
fixture = {
    "x": x.tolist(), "y": y.tolist(), "lrs": lrs, "clip": clip,
    "init": {k: v.tolist() for k, v in init.items()},
    "grad_norms": norms,
    "final": {"w": w.detach().tolist(), "b": b.detach().tolist(), "t": t.detach().tolist()},
}
json.dump(fixture, open("tests/fixtures/optim/adamw.json", "w"), indent=1)
print("wrote tests/fixtures/optim/adamw.json")
