#!/usr/bin/env python3
"""Reference values and gradients of ablate's three contrastive losses.

Computed in float64 with PyTorch autograd on fixed random inputs and written to
tests/fixtures/loss/losses.json; tests/losses.rs compares src/loss/ against
them (relative error <= 1e-5 in f32). Run once; the numbers are committed:

    python3 scripts/make-loss-references.py
"""
import json
import math
import pathlib

import torch

torch.manual_seed(0)
cases = []
for batch, dim in [(4, 3), (8, 16)]:
    x0 = torch.randn(batch, dim, dtype=torch.float64)
    y0 = torch.randn(batch, dim, dtype=torch.float64)
    for loss in ["infonce", "siglip", "cosine"]:
        x = x0.clone().requires_grad_(True)
        y = y0.clone().requires_grad_(True)
        t = torch.tensor(math.log(1 / 0.07) if loss == "infonce" else math.log(10.0), dtype=torch.float64, requires_grad=True)
        b = torch.tensor(-10.0, dtype=torch.float64, requires_grad=True)
        xn = x / x.norm(dim=1, keepdim=True)
        yn = y / y.norm(dim=1, keepdim=True)
        if loss == "infonce":
            logits = t.exp() * xn @ yn.T
            target = torch.arange(batch)
            value = (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2
        elif loss == "siglip":
            z = 2 * torch.eye(batch, dtype=torch.float64) - 1
            logits = t.exp() * xn @ yn.T + b
            value = -torch.nn.functional.logsigmoid(z * logits).sum() / batch
        else:
            value = (1 - (xn * yn).sum(dim=1)).mean()
        value.backward()
        case = {
            "loss": loss,
            "x": x0.tolist(),
            "y": y0.tolist(),
            "t": t.item(),
            "b": b.item(),
            "value": value.item(),
            "grad_x": x.grad.tolist(),
            "grad_y": y.grad.tolist(),
        }
        if loss in ("infonce", "siglip"):
            case["grad_t"] = t.grad.item()
        if loss == "siglip":
            case["grad_b"] = b.grad.item()
        cases.append(case)

out = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/loss/losses.json"
out.write_text(json.dumps({"generator": f"torch {torch.__version__}, float64", "cases": cases}, indent=1) + "\n")
print(f"wrote {len(cases)} cases to {out}")
