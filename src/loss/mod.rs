//! Contrastive losses between image and text embeddings, one file each
//! (OpenCLIP's `loss.py`, split): `infonce` (CLIP), `siglip` (pairwise
//! sigmoid), `cosine` (LIFT's positives-only loss, linear in batch size).
//! Each file holds its computation and declares the learnable scalars it
//! needs; adding a loss is a file and its line in `losses!` below. Each is
//! checked, value and gradients, against PyTorch float64 references
//! (tests/fixtures/loss, made by scripts/make-loss-references.py).

use burn::prelude::*;

/// The learnable scalars a loss needs, with their initial values. The model
/// holds them (`ClipModel::logit_scale`, `logit_bias`), so the optimiser and
/// checkpoints treat them like every other parameter.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Learnable {
    /// The log logit scale `t` (scale = eᵗ): its initial value.
    pub log_scale: Option<f64>,
    /// The range the optimiser step clamps `t` to, if any.
    pub log_scale_range: Option<(f64, f64)>,
    /// The logit bias: its initial value.
    pub bias: Option<f64>,
}

/// The current values of a loss's learnable scalars, `[1]` each, present
/// exactly where its [`Learnable`] declares them.
pub struct Learned<B: Backend> {
    pub log_scale: Option<Tensor<B, 1>>,
    pub bias: Option<Tensor<B, 1>>,
}

/// One loss: what the `loss` parameter calls it, what it learns, and how it
/// is computed.
pub trait ContrastiveLoss {
    const NAME: &'static str;
    fn learnable() -> Learnable;
    /// `x`, `y`: `[B, D]` image and text embeddings (pair `i` matches row
    /// `i`). Returns the scalar loss `[1]`.
    fn loss<B: Backend>(x: Tensor<B, 2>, y: Tensor<B, 2>, learned: Learned<B>) -> Tensor<B, 1>;
}

/// The registry: `Variant => file`, where `file.rs` defines
/// `pub struct Variant` implementing [`ContrastiveLoss`]. It declares the
/// modules and the [`Loss`] enum with its dispatch.
macro_rules! losses {
    ($($variant:ident => $file:ident),* $(,)?) => {
        $(pub mod $file;)*

        /// Which loss a training run uses (parameter `loss`): one variant per
        /// registered file. Written (model.json, checkpoints) as its name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Loss {
            $($variant),*
        }

        impl Loss {
            pub const ALL: &'static [Loss] = &[$(Loss::$variant),*];
            pub const NAMES: &'static [&'static str] = &[$(<$file::$variant as ContrastiveLoss>::NAME),*];

            pub fn name(self) -> &'static str {
                match self {
                    $(Loss::$variant => <$file::$variant as ContrastiveLoss>::NAME),*
                }
            }

            pub fn learnable(self) -> Learnable {
                match self {
                    $(Loss::$variant => <$file::$variant as ContrastiveLoss>::learnable()),*
                }
            }

            pub fn compute<B: Backend>(self, x: Tensor<B, 2>, y: Tensor<B, 2>, learned: Learned<B>) -> Tensor<B, 1> {
                match self {
                    $(Loss::$variant => <$file::$variant as ContrastiveLoss>::loss(x, y, learned)),*
                }
            }
        }
    };
}

losses! {
    InfoNce => infonce,
    SigLip => siglip,
    Cosine => cosine,
}

impl Loss {
    pub fn from_name(name: &str) -> Option<Loss> {
        Loss::ALL.iter().copied().find(|l| l.name() == name)
    }
}

impl serde::Serialize for Loss {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Loss {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Loss::from_name(&name).ok_or_else(|| serde::de::Error::custom(format!("unknown loss {name:?}; one of {}", Loss::NAMES.join(", "))))
    }
}

/// Rows scaled to unit L2 norm.
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().powf_scalar(2.0).sum_dim(1).sqrt();
    x / norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registered_loss_is_found_by_its_name_and_learns_what_it_reads() {
        assert_eq!(Loss::ALL.len(), Loss::NAMES.len());
        for &loss in Loss::ALL {
            assert_eq!(Loss::from_name(loss.name()), Some(loss));
            assert_eq!(serde_json::to_value(loss).unwrap(), serde_json::json!(loss.name()));
            assert_eq!(serde_json::from_value::<Loss>(serde_json::json!(loss.name())).unwrap(), loss);
            let learnable = loss.learnable();
            assert!(learnable.log_scale_range.is_none() || learnable.log_scale.is_some(), "{loss:?}: a range for no scale");
            // The loss runs on exactly the scalars it declares.
            let device = Default::default();
            let x = Tensor::<burn::backend::Flex, 2>::from_floats([[1.0, 0.0], [0.0, 1.0]], &device);
            let scalar = |v: f64| Tensor::<burn::backend::Flex, 1>::from_floats([v as f32], &device);
            let learned = Learned { log_scale: learnable.log_scale.map(scalar), bias: learnable.bias.map(scalar) };
            let value: f32 = loss.compute(x.clone(), x, learned).into_scalar();
            assert!(value.is_finite(), "{loss:?}: {value}");
        }
        assert_eq!(Loss::from_name("mse"), None);
    }
}
