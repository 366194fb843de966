//! Pooling token states into one vector per text.
//!
//! Every pooling is a weighted sum over positions, so it is done on the device
//! as one batched matmul `[batch, 1, seq] × [batch, seq, hidden]` with weights
//! built on the host from the true lengths: padding gets weight 0 by
//! construction, whatever the backend wrote there.

use std::fmt;
use std::str::FromStr;

use anyhow::bail;
use burn::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Average over all real tokens, specials included (sentence-transformers' mean pooling).
    Mean,
    /// The first token (`[CLS]` for BERT).
    Cls,
    /// The last real token: `[SEP]` for BERT, the appended `<eos>` for decoders.
    Eos,
}

impl Pooling {
    pub const NAMES: &'static [&'static str] = &["mean", "cls", "eos"];

    pub fn name(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Eos => "eos",
        }
    }

    /// Per-position weights, row-major `[lengths.len(), seq]`.
    pub fn weights(self, lengths: &[usize], seq: usize) -> Vec<f32> {
        let mut w = vec![0.0; lengths.len() * seq];
        for (b, &len) in lengths.iter().enumerate() {
            let row = &mut w[b * seq..(b + 1) * seq];
            match self {
                Pooling::Mean => row[..len].fill(1.0 / len.max(1) as f32),
                Pooling::Cls => row[0] = 1.0,
                Pooling::Eos => row[len.max(1) - 1] = 1.0,
            }
        }
        w
    }

    /// Pools `hidden` `[batch, seq, dim]` into `[batch, dim]`.
    pub fn apply<B: Backend>(self, hidden: Tensor<B, 3>, lengths: &[usize]) -> Tensor<B, 2> {
        let [batch, seq, dim] = hidden.dims();
        let w = Tensor::<B, 3>::from_data(TensorData::new(self.weights(lengths, seq), [batch, 1, seq]), &hidden.device());
        w.matmul(hidden).reshape([batch, dim])
    }
}

impl fmt::Display for Pooling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Pooling {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "mean" => Pooling::Mean,
            "cls" => Pooling::Cls,
            "eos" => Pooling::Eos,
            other => bail!("unknown pooling '{other}' (expected one of: mean, cls, eos)"),
        })
    }
}

/// Scales `v` to unit L2 norm (a zero vector stays zero).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_respect_lengths() {
        assert_eq!(Pooling::Mean.weights(&[2, 4], 4), [0.5, 0.5, 0.0, 0.0, 0.25, 0.25, 0.25, 0.25]);
        assert_eq!(Pooling::Cls.weights(&[2], 3), [1.0, 0.0, 0.0]);
        assert_eq!(Pooling::Eos.weights(&[2, 3], 3), [0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn apply_pools_on_the_device() {
        type B = burn::backend::Flex;
        let device = Default::default();
        // batch 1, seq 3 (2 real), dim 2
        let h = Tensor::<B, 3>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0, 100.0, 100.0], [1, 3, 2]), &device);
        let mean: Vec<f32> = Pooling::Mean.apply(h.clone(), &[2]).into_data().to_vec().unwrap();
        assert_eq!(mean, [2.0, 3.0]);
        let eos: Vec<f32> = Pooling::Eos.apply(h, &[2]).into_data().to_vec().unwrap();
        assert_eq!(eos, [3.0, 4.0]);
    }

    #[test]
    fn parse_and_normalize() {
        assert_eq!("eos".parse::<Pooling>().unwrap(), Pooling::Eos);
        assert!("max".parse::<Pooling>().unwrap_err().to_string().contains("mean, cls, eos"));
        let mut v = [3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, [0.6, 0.8]);
    }
}
