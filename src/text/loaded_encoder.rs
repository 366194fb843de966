//! A frozen encoder loaded on the backend its device picked.

use anyhow::bail;

use super::{EmbedOptions, EmbeddedText, EncoderSpec, TextEncoder};
#[cfg(feature = "cuda")]
use crate::device::Cuda;
use crate::device::{Cpu, Device};

/// A text encoder on a concrete backend (an enum, not [`OnBackend`]: it
/// outlives the call that loads it).
pub enum LoadedEncoder {
    Cpu(TextEncoder<Cpu>),
    #[cfg(feature = "cuda")]
    Cuda(TextEncoder<Cuda>, usize),
}

impl LoadedEncoder {
    pub fn load(spec: &EncoderSpec, device: Device) -> anyhow::Result<LoadedEncoder> {
        match device {
            Device::Cpu => Ok(LoadedEncoder::Cpu(TextEncoder::load(spec, &Default::default())?)),
            #[cfg(feature = "cuda")]
            Device::Cuda(n) => Ok(LoadedEncoder::Cuda(TextEncoder::load(spec, &burn::backend::cuda::CudaDevice::new(n))?, n)),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => unreachable!("DeviceRequest::resolve refuses GPUs in a build without `cuda`"),
        }
    }

    /// The device, as recorded on the attempt.
    pub fn device_name(&self) -> String {
        match self {
            LoadedEncoder::Cpu(_) => Device::Cpu.name(),
            #[cfg(feature = "cuda")]
            LoadedEncoder::Cuda(_, n) => Device::Cuda(*n).name(),
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
