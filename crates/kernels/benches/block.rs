//! Time of one fused block's forward and backward pass at the shapes of
//! ablate's ViT presets (`cargo bench -p ablate-kernels`), with the achieved
//! GFLOP/s (matmul FLOPs only: 2·m·n·k per product); then the matmul
//! ceiling: single products through the same `gemm` path at the blocks'
//! largest shapes and a large square one, which no training step can beat.

use ablate_kernels::{Block, BlockShape, PARAMETERS, backward, forward, matmul_row_major};
use std::time::Instant;

fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    blocks();
    ceiling();
}

/// GFLOP/s of single products `[m, k]·[k, n]` (median of 20 after 3 warm-ups).
fn ceiling() {
    let shapes = [
        ("vit-micro b64 MLP (4160×64·64×256)", 4160, 64, 256),
        ("vit-tiny b16 q/k/v (3152×192·192×576)", 3152, 192, 576),
        ("vit-tiny b16 MLP (3152×192·192×768)", 3152, 192, 768),
        ("square 1024", 1024, 1024, 1024),
    ];
    println!("\n| product | ms | GFLOP/s |");
    println!("|---|---|---|");
    for (name, m, k, n) in shapes {
        let (a, b) = (pseudo_random(m * k, 1), pseudo_random(k * n, 2));
        let mut dst = vec![0f32; m * n];
        let times: Vec<f64> = (0..23)
            .map(|_| {
                let t = Instant::now();
                matmul_row_major(&mut dst, &a, &b, m, k, n);
                std::hint::black_box(&dst);
                t.elapsed().as_secs_f64()
            })
            .skip(3)
            .collect();
        let t = median(times);
        println!("| {name} | {:.2} | {:.0} |", t * 1e3, 2.0 * (m * k * n) as f64 / t / 1e9);
    }
}

fn blocks() {
    let presets =
        [("vit-micro, batch 64", 64, 65, 64, 4), ("vit-micro, batch 256", 256, 65, 64, 4), ("vit-tiny, batch 16", 16, 197, 192, 3)];
    println!("| block | forward ms | GFLOP/s | backward ms | GFLOP/s |");
    println!("|---|---|---|---|---|");
    for (name, sequences, tokens, width, heads) in presets {
        let s = BlockShape { sequences, tokens, width, heads, hidden: 4 * width, causal: false, eps: 1e-5 };
        let (w, h, n) = (width, 4 * width, sequences * tokens);
        let sizes = [w, w, w * w, w, w * w, w, w * w, w, w * w, w, w, w, w * h, h, h * w, w];
        let params: Vec<Vec<f32>> = sizes.iter().enumerate().map(|(i, &len)| pseudo_random(len, i as u64 + 1)).collect();
        let slices: [&[f32]; PARAMETERS] = std::array::from_fn(|i| params[i].as_slice());
        let weights = Block::from_array(slices);
        let x = pseudo_random(n * w, 99);
        let dy = pseudo_random(n * w, 100);
        let flops = 2.0 * n as f64 * (4.0 * (w * w) as f64 + 2.0 * (w * h) as f64 + 2.0 * (tokens * w) as f64);
        let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
        for _ in 0..12 {
            let t = Instant::now();
            let (_, activations) = forward(&s, &weights, &x);
            fwd.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            std::hint::black_box(backward(&s, &weights, &activations, &dy));
            bwd.push(t.elapsed().as_secs_f64());
        }
        let (f, b) = (median(fwd), median(bwd));
        println!("| {name} | {:.2} | {:.0} | {:.2} | {:.0} |", f * 1e3, flops / f / 1e9, b * 1e3, 2.0 * flops / b / 1e9);
    }
}
