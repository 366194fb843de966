//! What GPUs this machine has, for the scheduler's `--gpus` default and for
//! stages whose `device = "auto"`.

/// NVIDIA GPUs listed by `nvidia-smi -L` (0 where it is absent or fails).
pub fn count() -> u32 {
    std::process::Command::new("nvidia-smi")
        .arg("-L")
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or(0, |o| String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.starts_with("GPU ")).count() as u32)
}
