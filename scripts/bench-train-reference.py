#!/usr/bin/env python3
"""The PyTorch side of the training benchmark (docs/BENCHMARKS.md): the same
image tower, head, loss and optimizer as ablate's `train` kind, on the same
kind of synthetic data, timed the same way (steps after a warm-up).

    python3 scripts/bench-train-reference.py --model vit-micro --batch 64 --threads 2
    python3 scripts/bench-train-reference.py --model vit-b16 --batch 256 --device cuda [--tf32]
    python3 scripts/bench-train-reference.py --model vit-b16 --batch 256 --device cuda --amp bf16 [--compile]

Model: pre-norm ViT (patch embedding as a strided conv, learned positions,
separate q/k/v/out projections, exact GELU, mean pooling over patches, final
LayerNorm), projector Linear-GELU-Linear into D = 384, InfoNCE with a
learnable logit scale (or the cosine loss), AdamW(β=(0.9, 0.98), ε=1e-6,
weight decay 0.2 on matrices only). Batches are assembled on the host like
ablate's (uint8 images normalised per step).

`--amp bf16` is torch's automatic mixed precision: the forward under
`torch.autocast` in bfloat16, f32 master weights, gradients and AdamW state
(bf16 has f32's exponent range, so no GradScaler), and the loss in f32.
`--compile` runs the tower through `torch.compile`; compiling happens in the
warm-up steps, whose time is reported apart as `compile_s` (much shorter
once inductor's on-disk cache holds the same graphs).
"""
import argparse
import contextlib
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {  # image size, patch, width, depth, heads
    "vit-micro": (32, 4, 64, 3, 4),
    "vit-tiny": (224, 16, 192, 12, 3),
    "vit-small": (224, 16, 384, 12, 6),
    "vit-b16": (224, 16, 768, 12, 12),
}


class Block(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.q, self.k, self.v, self.out = (nn.Linear(width, width) for _ in range(4))
        self.ln_2 = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 4 * width)
        self.proj = nn.Linear(4 * width, width)

    def forward(self, x):
        b, t, w = x.shape
        h = self.ln_1(x)
        split = lambda l: l(h).view(b, t, self.heads, w // self.heads).transpose(1, 2)
        a = F.scaled_dot_product_attention(split(self.q), split(self.k), split(self.v))
        x = x + self.out(a.transpose(1, 2).reshape(b, t, w))
        return x + self.proj(F.gelu(self.fc(self.ln_2(x))))


class Tower(nn.Module):
    def __init__(self, size, patch, width, depth, heads, dim):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, width, patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.randn((size // patch) ** 2, width) * 0.02)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.ln_post = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, dim)
        self.fc2 = nn.Linear(dim, dim)
        self.logit_scale = nn.Parameter(torch.tensor([math.log(1 / 0.07)]))

    def forward(self, images):
        x = self.patch_embed(images).flatten(2).transpose(1, 2) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        x = self.ln_post(x).mean(1)
        return self.fc2(F.gelu(self.fc1(x)))


def forward_flops(size, patch, width, depth, heads):
    t = (size // patch) ** 2
    per_block = 2 * t * width * width * (4 + 8) + 4 * t * t * width
    return 2 * t * 3 * patch * patch * width + depth * per_block


def ceiling():
    """GFLOP/s of single matmuls at the shapes `cargo bench -p ablate-kernels`
    times (median of 20 after 3 warm-ups): PyTorch's ceiling on this machine."""
    shapes = [("vit-micro b64 MLP (4160×64·64×256)", 4160, 64, 256),
              ("vit-tiny b16 q/k/v (3152×192·192×576)", 3152, 192, 576),
              ("vit-tiny b16 MLP (3152×192·192×768)", 3152, 192, 768),
              ("square 1024", 1024, 1024, 1024)]
    print("| product | ms | GFLOP/s |\n|---|---|---|")
    for name, m, k, n in shapes:
        a, b = torch.rand(m, k) - 0.5, torch.rand(k, n) - 0.5
        times = []
        for i in range(23):
            t = time.perf_counter()
            torch.mm(a, b)
            if i >= 3:
                times.append(time.perf_counter() - t)
        t = sorted(times)[len(times) // 2]
        print(f"| {name} | {t * 1e3:.2f} | {2 * m * k * n / t / 1e9:.0f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vit-micro", choices=PRESETS)
    ap.add_argument("--loss", default="infonce", choices=["infonce", "cosine"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tf32", action="store_true",
                    help="let float32 matmuls and convolutions use TF32 tensor cores (burn's CUDA matmul does)")
    ap.add_argument("--amp", default="none", choices=["none", "bf16"],
                    help="bf16: forward under torch.autocast in bfloat16 (f32 weights, optimizer and loss)")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the tower (compiled during the warm-up steps, timed apart as compile_s)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--ceiling", action="store_true", help="time single matmuls instead (the machine's matmul ceiling)")
    args = ap.parse_args()
    if args.compile and args.warmup < 1:
        ap.error("--compile needs --warmup >= 1: the first step compiles, and that is not what is being timed")
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.ceiling:
        return ceiling()
    torch.manual_seed(0)
    size, patch, width, depth, heads = PRESETS[args.model]
    dim, dev = 384, torch.device(args.device)
    model = Tower(size, patch, width, depth, heads, dim).to(dev)
    # The compiled module shares the parameters; logit_scale is still read from `model`.
    forward = torch.compile(model) if args.compile else model
    # Without AMP both contexts are empty: `--amp none` runs exactly the f32 step it always did.
    bf16 = args.amp == "bf16"
    amp = torch.autocast(device_type=dev.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    f32 = torch.autocast(device_type=dev.type, enabled=False) if bf16 else contextlib.nullcontext()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.2}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.98), eps=1e-6)
    n = args.batch * 2
    pixels = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)
    texts = torch.randn(n, dim)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    labels = torch.arange(args.batch, device=dev)
    start = None
    began = time.perf_counter()
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            if dev.type == "cuda":
                torch.cuda.synchronize()
                # The peak of the timed steps: weights, AdamW state and one step's activations.
                torch.cuda.reset_peak_memory_stats(dev)
            start = time.perf_counter()
        idx = torch.randperm(n)[: args.batch]
        images = ((pixels[idx].float() / 255 - mean) / std).to(dev, non_blocking=True)
        with amp:
            embeddings = forward(images)
        # The loss in f32 (autocast would run the logits matmul in bf16); a no-op cast without AMP.
        with f32:
            x = F.normalize(embeddings.float(), dim=-1)
            y = F.normalize(texts[idx].to(dev, non_blocking=True), dim=-1)
            if args.loss == "infonce":
                logits = model.logit_scale.exp() * x @ y.t()
                loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
            else:
                loss = (1 - (x * y).sum(-1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        loss.item()  # one host sync per step, as ablate records the loss
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    # The warm-up steps: with --compile, mostly tracing and code generation.
    compile_s = start - began if args.compile else None
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    ips = args.steps * args.batch / seconds
    gflops = ips * 3 * forward_flops(size, patch, width, depth, heads) / 1e9
    result = {"model": args.model, "loss": args.loss, "batch": args.batch, "steps": args.steps,
              "images_per_s": ips, "gflops": gflops, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "tf32": args.tf32, "amp": args.amp, "compile": args.compile, "peak_memory_gib": peak}
    if args.compile:
        result["compile_s"] = compile_s
    extra = "".join([f", amp {args.amp}" if args.amp != "none" else "",
                     f", compiled in {compile_s:.1f} s" if args.compile else "",
                     f", peak {peak:.2f} GiB" if peak is not None else ""])
    print(json.dumps(result) if args.json else
          f"pytorch {args.model} {args.loss} batch {args.batch} on {args.device}: {ips:.1f} images/s, {gflops:.1f} GFLOP/s{extra}")


if __name__ == "__main__":
    main()
