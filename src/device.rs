//! Where a computation runs (`device = "auto" | "cpu" | "cuda:N"`): the
//! request checked against the GPUs present, and the one place that maps it
//! to burn's Flex or CUDA backend (training, evaluation, `bench-train`, the
//! frozen encoders).

use std::path::{Path, PathBuf};

use anyhow::bail;
use burn::tensor::backend::Backend;

/// The CPU backend.
pub type Cpu = burn::backend::Flex;

/// The NVIDIA GPU backend (`cuda` feature); devices are `burn::backend::cuda::CudaDevice::new(n)`.
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda;

/// A device as written in a pipeline file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    /// The first GPU when built with `--features cuda` and one is present, else the CPU.
    Auto,
    Cpu,
    Cuda(usize),
}

impl DeviceRequest {
    pub fn parse(text: &str) -> Result<DeviceRequest, String> {
        match text {
            "auto" => Ok(DeviceRequest::Auto),
            "cpu" => Ok(DeviceRequest::Cpu),
            _ => match text.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceRequest::Cuda(n)),
                _ => Err(format!("unknown device \"{text}\" (expected \"auto\", \"cpu\" or \"cuda:N\")")),
            },
        }
    }

    /// What this request comes to on this machine, the GPU checked to exist
    /// first: burn's CUDA backend panics on a worker thread when the driver
    /// or the device is missing, which would take the whole run down.
    /// Resolve once and use the result (it may run `nvidia-smi`).
    pub fn resolve(self) -> anyhow::Result<Device> {
        let n = match self {
            DeviceRequest::Cpu => return Ok(Device::Cpu),
            DeviceRequest::Auto if !cfg!(feature = "cuda") => return Ok(Device::Cpu),
            DeviceRequest::Auto => 0,
            DeviceRequest::Cuda(n) => n,
        };
        if !cfg!(feature = "cuda") {
            bail!("device cuda:{n} needs a build with `--features cuda`");
        }
        let count = crate::gpu::count();
        if self == DeviceRequest::Auto && count == 0 {
            return Ok(Device::Cpu);
        }
        if n as u32 >= count {
            bail!("device cuda:{n} asked for, but `nvidia-smi -L` lists {count} NVIDIA GPU(s) on this machine");
        }
        Ok(Device::Cuda(n))
    }

    /// Whether this request occupies a GPU (what the stage declares to the scheduler).
    pub fn uses_gpu(self) -> bool {
        match self {
            DeviceRequest::Cpu => false,
            DeviceRequest::Cuda(_) => true,
            DeviceRequest::Auto => cfg!(feature = "cuda") && crate::gpu::count() > 0,
        }
    }
}

/// A device request resolved on this machine ([`DeviceRequest::resolve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// A GPU that exists here (and a build with `--features cuda`).
    Cuda(usize),
}

/// A computation generic over the backend, which [`Device::run`] runs on the
/// device's backend: the one place that maps `cpu` / `cuda:N` to burn's
/// Flex or CUDA backend.
pub trait OnBackend {
    type Output;
    fn run<B: Backend>(self, device: &B::Device) -> anyhow::Result<Self::Output>;
}

impl Device {
    /// `cpu` or `cuda:N`, as recorded on an attempt.
    pub fn name(self) -> String {
        match self {
            Device::Cpu => "cpu".to_owned(),
            Device::Cuda(n) => format!("cuda:{n}"),
        }
    }

    /// Runs `work` on the CPU backend or on this GPU.
    pub fn run<W: OnBackend>(self, work: W) -> anyhow::Result<W::Output> {
        match self {
            Device::Cpu => work.run::<Cpu>(&Default::default()),
            #[cfg(feature = "cuda")]
            Device::Cuda(n) => work.run::<Cuda>(&burn::backend::cuda::CudaDevice::new(n)),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => unreachable!("DeviceRequest::resolve refuses GPUs in a build without `cuda`"),
        }
    }
}

/// The folder of the workspace that keeps what burn's GPU backend learns
/// about a GPU model: autotune results (the fastest kernel per shape key)
/// and compiled kernels. One folder per GPU model and backend version, so a
/// cluster's nodes share it through the workspace's file system while a node
/// with another GPU (or a build with another burn) tunes afresh; cubecl adds
/// its own version below it as well.
pub fn kernel_cache_dir(workspace: &Path, gpu_model: &str) -> PathBuf {
    let slug: String = gpu_model.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    workspace.join("kernels").join(format!("burn-{BURN_VERSION}")).join(slug)
}

/// The burn version Cargo.toml pins (a unit test holds the two together).
pub const BURN_VERSION: &str = "0.21.0";

/// Points burn's CUDA backend at [`kernel_cache_dir`] for the first GPU of
/// this machine, before it starts: every stage and process using the
/// workspace then reuses the kernels it tuned and compiled instead of
/// spending minutes on them again. Must run before the first CUDA
/// computation of the process, and only once; a no-op in a build without
/// `cuda` or on a machine without a GPU. Returns the folder used.
pub fn use_kernel_cache(workspace: &Path) -> anyhow::Result<Option<PathBuf>> {
    if !cfg!(feature = "cuda") || crate::gpu::count() == 0 {
        return Ok(None);
    }
    let model = crate::gpu::model_name(0).unwrap_or_else(|| "unknown-gpu".to_owned());
    let dir = kernel_cache_dir(workspace, &model);
    std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("creating the GPU kernel cache {}: {e}", dir.display()))?;
    #[cfg(feature = "cuda")]
    {
        use cubecl_runtime::config::cache::CacheConfig;
        use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig};
        static SET: std::sync::Once = std::sync::Once::new();
        let dir = dir.clone();
        SET.call_once(move || {
            // A cubecl.toml or CUBECL_* variables still apply (autotune level, logs).
            let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
            config.autotune.cache = CacheConfig::File(dir.join("autotune"));
            config.compilation.cache = Some(CacheConfig::File(dir.join("compiled")));
            CubeClRuntimeConfig::set(config);
        });
    }
    Ok(Some(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_cache_is_keyed_by_the_pinned_burn_and_the_gpu_model() {
        let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
        assert!(manifest.contains(&format!("burn = {{ version = \"={BURN_VERSION}\"")), "Cargo.toml pins another burn than {BURN_VERSION}");
        let ws = Path::new("/w");
        assert_eq!(kernel_cache_dir(ws, "NVIDIA H200"), Path::new("/w/kernels/burn-0.21.0/NVIDIA_H200"));
        assert_ne!(kernel_cache_dir(ws, "NVIDIA H100 80GB HBM3"), kernel_cache_dir(ws, "NVIDIA H200"));
        assert_eq!(kernel_cache_dir(ws, "../x/y"), Path::new("/w/kernels/burn-0.21.0/___x_y"));
    }
}
