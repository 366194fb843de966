//! The learning rate at each step: linear warmup from 0 to the peak over
//! `warmup_steps`, then cosine decay to 0 at the last step (OpenCLIP's
//! `cosine_lr`).

/// The rate for step `step` (0-based) of `total`.
pub fn lr_at(step: usize, total: usize, warmup: usize, peak: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let decay_steps = total.saturating_sub(warmup).max(1);
    let progress = (step - warmup) as f64 / decay_steps as f64;
    0.5 * (1.0 + (std::f64::consts::PI * progress).cos()) * peak
}

#[cfg(test)]
mod tests {
    use super::lr_at;

    #[test]
    fn warms_up_linearly_then_decays_to_zero() {
        assert!((lr_at(0, 100, 10, 1.0) - 0.1).abs() < 1e-12);
        assert!((lr_at(9, 100, 10, 1.0) - 1.0).abs() < 1e-12);
        assert!((lr_at(10, 100, 10, 1.0) - 1.0).abs() < 1e-12);
        assert!((lr_at(55, 100, 10, 1.0) - 0.5).abs() < 1e-12);
        assert!(lr_at(99, 100, 10, 1.0) < 0.001);
        let lrs: Vec<f64> = (10..100).map(|s| lr_at(s, 100, 10, 1.0)).collect();
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]));
    }

    #[test]
    fn no_warmup_starts_at_peak() {
        assert_eq!(lr_at(0, 50, 0, 3e-4), 3e-4);
    }
}
