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

/// The model name of GPU `index` (`nvidia-smi --query-gpu=name`), e.g.
/// "NVIDIA H200"; `None` where nvidia-smi is absent or fails.
pub fn model_name(index: usize) -> Option<String> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader", "-i", &index.to_string()])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let name = String::from_utf8_lossy(&out.stdout).lines().next()?.trim().to_owned();
    (!name.is_empty()).then_some(name)
}
