//! Where a computation runs (`device = "auto" | "cpu" | "cuda:N"`): the
//! request checked against the GPUs present, and the one place that maps it
//! to burn's Flex or CUDA backend (training, evaluation, `bench-train`, the
//! frozen encoders).

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
