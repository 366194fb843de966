//! Where an encoder runs (`device = "auto" | "cpu" | "cuda:N"`), and an
//! encoder loaded on whichever backend that picked.

use anyhow::bail;
use burn::tensor::backend::Backend;

use super::{Cpu, EmbedOptions, EmbeddedText, EncoderSpec, TextEncoder};

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

    /// The GPU this request runs on, if any (`auto`: the first, when there is one).
    pub fn gpu_index(self) -> Option<usize> {
        match self {
            DeviceRequest::Cpu => None,
            DeviceRequest::Cuda(n) => Some(n),
            DeviceRequest::Auto => self.uses_gpu().then_some(0),
        }
    }

    /// The GPU to compute on, if any, checked to exist first: burn's CUDA
    /// backend panics on a worker thread when the driver or the device is
    /// missing, which would take the whole run down.
    pub fn gpu(self) -> anyhow::Result<Option<usize>> {
        let Some(n) = self.gpu_index() else { return Ok(None) };
        if !cfg!(feature = "cuda") {
            bail!("device cuda:{n} needs a build with `--features cuda`");
        }
        let count = crate::gpu::count();
        if n as u32 >= count {
            bail!("device cuda:{n} asked for, but `nvidia-smi -L` lists {count} NVIDIA GPU(s) on this machine");
        }
        Ok(Some(n))
    }

    /// The device this request computes on here: `cpu` or `cuda:N`.
    pub fn resolved_name(self) -> String {
        self.gpu_index().map_or_else(|| "cpu".to_owned(), |n| format!("cuda:{n}"))
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

/// A computation generic over the backend, which [`DeviceRequest::run`]
/// runs on the backend and device a request names: the one place that maps
/// `cpu` / `cuda:N` to burn's Flex or CUDA backend.
pub trait OnBackend {
    type Output;
    fn run<B: Backend>(self, device: &B::Device) -> anyhow::Result<Self::Output>;
}

impl DeviceRequest {
    /// Runs `work` on the CPU backend or on the requested GPU.
    pub fn run<W: OnBackend>(self, work: W) -> anyhow::Result<W::Output> {
        match self.gpu()? {
            None => work.run::<Cpu>(&Default::default()),
            #[cfg(feature = "cuda")]
            Some(n) => work.run::<super::Cuda>(&burn::backend::cuda::CudaDevice::new(n)),
            #[cfg(not(feature = "cuda"))]
            Some(_) => unreachable!("DeviceRequest::gpu refuses GPUs in a build without `cuda`"),
        }
    }
}

/// A text encoder on a concrete backend (an enum, not [`OnBackend`]: it
/// outlives the call that loads it).
pub enum LoadedEncoder {
    Cpu(TextEncoder<Cpu>),
    #[cfg(feature = "cuda")]
    Cuda(TextEncoder<super::Cuda>, usize),
}

impl LoadedEncoder {
    pub fn load(spec: &EncoderSpec, device: DeviceRequest) -> anyhow::Result<LoadedEncoder> {
        match device.gpu()? {
            None => Ok(LoadedEncoder::Cpu(TextEncoder::load(spec, &Default::default())?)),
            #[cfg(feature = "cuda")]
            Some(n) => Ok(LoadedEncoder::Cuda(TextEncoder::load(spec, &burn::backend::cuda::CudaDevice::new(n))?, n)),
            #[cfg(not(feature = "cuda"))]
            Some(_) => unreachable!("DeviceRequest::gpu refuses GPUs in a build without `cuda`"),
        }
    }

    /// The device, as recorded on the attempt.
    pub fn device_name(&self) -> String {
        match self {
            LoadedEncoder::Cpu(_) => "cpu".into(),
            #[cfg(feature = "cuda")]
            LoadedEncoder::Cuda(_, n) => format!("cuda:{n}"),
        }
    }

    pub fn dim(&self) -> usize {
        match self {
            LoadedEncoder::Cpu(e) => e.dim(),
            #[cfg(feature = "cuda")]
            LoadedEncoder::Cuda(e, _) => e.dim(),
        }
    }

    pub fn embed_with_progress(
        &self,
        texts: &[&str],
        opts: &EmbedOptions,
        progress: impl FnMut(usize) -> anyhow::Result<()>,
    ) -> anyhow::Result<Vec<EmbeddedText>> {
        if opts.batch_size == 0 {
            bail!("batch_size must be at least 1");
        }
        match self {
            LoadedEncoder::Cpu(e) => e.embed_with_progress(texts, opts, progress),
            #[cfg(feature = "cuda")]
            LoadedEncoder::Cuda(e, _) => e.embed_with_progress(texts, opts, progress),
        }
    }
}
