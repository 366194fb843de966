//! Parameters by name. A module's float parameters are addressed by their
//! field path (`visual.blocks.0.attn.q.weight`); that is how checkpoints
//! store them (burn's layout), how exported weights are named (PyTorch's
//! layout: Linear weights `[out, in]`, LayerNorm `weight`/`bias`), and how
//! weights are initialised from the run's seed, independently of backend.

use std::collections::HashMap;

use anyhow::bail;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

use crate::rng::Rng;

/// Which naming and layout a file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// burn's own: field names, Linear weights `[in, out]` (checkpoints).
    Burn,
    /// PyTorch's: Linear weights `[out, in]`, LayerNorm `weight`/`bias` (exports).
    PyTorch,
}

/// What a parameter is, from the module it sits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    LinearWeight,
    Bias,
    NormGain,
    NormShift,
    Embedding,
    /// A bare parameter (logit scale, position embedding, class token).
    Other,
}

#[derive(Default)]
struct PathStack(Vec<(String, String)>);

impl PathStack {
    fn enter(&mut self, name: &str, container: &str) {
        self.0.push((name.to_owned(), container.to_owned()));
    }
    fn exit(&mut self) {
        self.0.pop();
    }
    fn role(&self) -> Role {
        match self.0.last().map(|(n, c)| (n.as_str(), c.as_str())) {
            Some(("weight", "Struct:Linear")) => Role::LinearWeight,
            Some(("bias", _)) => Role::Bias,
            Some(("gamma", "Struct:LayerNorm")) => Role::NormGain,
            Some(("beta", "Struct:LayerNorm")) => Role::NormShift,
            Some(("weight", "Struct:Embedding")) => Role::Embedding,
            _ => Role::Other,
        }
    }
    fn path(&self, layout: Layout) -> String {
        let mut parts: Vec<&str> = self.0.iter().map(|(n, _)| n.as_str()).collect();
        if layout == Layout::PyTorch {
            match self.role() {
                Role::NormGain => *parts.last_mut().expect("a parameter has a name") = "weight",
                Role::NormShift => *parts.last_mut().expect("a parameter has a name") = "bias",
                _ => {}
            }
        }
        parts.join(".")
    }
}

/// A parameter's values on the host.
#[derive(Debug, Clone)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// A tensor's values on the host.
pub fn to_host<B: Backend, const D: usize>(t: Tensor<B, D>) -> HostTensor {
    let shape = t.dims().to_vec();
    HostTensor { shape, values: t.into_data().convert::<f32>().into_vec().expect("f32 data") }
}

struct Collector {
    stack: PathStack,
    layout: Layout,
    out: Vec<(String, HostTensor)>,
}

impl<B: Backend> ModuleVisitor<B> for Collector {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.stack.enter(name, container);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val();
        let t = if self.layout == Layout::PyTorch && self.stack.role() == Role::LinearWeight { t.transpose() } else { t };
        self.out.push((self.stack.path(self.layout), to_host(t)));
    }
}

/// Every float parameter of `module`, in visiting order.
pub fn collect<B: Backend, M: Module<B>>(module: &M, layout: Layout) -> Vec<(String, HostTensor)> {
    let mut collector = Collector { stack: PathStack::default(), layout, out: Vec::new() };
    module.visit(&mut collector);
    collector.out
}

/// Paths, roles and shapes of every float parameter (burn layout).
pub fn describe<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, Role, Vec<usize>)> {
    struct Describer(PathStack, Vec<(String, Role, Vec<usize>)>);
    impl<B: Backend> ModuleVisitor<B> for Describer {
        fn enter_module(&mut self, name: &str, container: &str) {
            self.0.enter(name, container);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.0.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.1.push((self.0.path(Layout::Burn), self.0.role(), param.shape().dims::<D>().to_vec()));
        }
    }
    let mut d = Describer(PathStack::default(), Vec::new());
    module.visit(&mut d);
    d.1
}

/// Replaces every float parameter by the value a function gives for its
/// (path, role, shape); `None` keeps the current value. Parameters stay
/// trainable.
pub fn replace<B: Backend, M: Module<B>>(
    module: M,
    layout: Layout,
    mut value: impl FnMut(&str, Role, &[usize]) -> anyhow::Result<Option<HostTensor>>,
) -> anyhow::Result<M> {
    struct Replacer<'a, F> {
        stack: PathStack,
        layout: Layout,
        value: &'a mut F,
        error: Option<anyhow::Error>,
    }
    impl<B: Backend, F: FnMut(&str, Role, &[usize]) -> anyhow::Result<Option<HostTensor>>> ModuleMapper<B> for Replacer<'_, F> {
        fn enter_module(&mut self, name: &str, container: &str) {
            self.stack.enter(name, container);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.stack.exit();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, tensor, mapper) = param.consume();
            let role = self.stack.role();
            let transpose = self.layout == Layout::PyTorch && role == Role::LinearWeight;
            let mut shape = tensor.dims().to_vec();
            if transpose {
                shape.reverse();
            }
            let path = self.stack.path(self.layout);
            let new = match (self.value)(&path, role, &shape) {
                Ok(Some(host)) if host.shape == shape => {
                    let t = Tensor::<B, D>::from_data(TensorData::new(host.values, shape), &tensor.device());
                    let t = if transpose { t.transpose() } else { t };
                    Some(if tensor.is_require_grad() { t.require_grad() } else { t })
                }
                Ok(Some(host)) => {
                    self.error.get_or_insert(anyhow::anyhow!("`{path}` has shape {:?}, the model expects {shape:?}", host.shape));
                    None
                }
                Ok(None) => None,
                Err(e) => {
                    self.error.get_or_insert(e);
                    None
                }
            };
            Param::from_mapped_value(id, new.unwrap_or(tensor), mapper)
        }
    }
    let mut replacer = Replacer { stack: PathStack::default(), layout, value: &mut value, error: None };
    let module = module.map(&mut replacer);
    match replacer.error {
        Some(e) => Err(e),
        None => Ok(module),
    }
}

/// Loads every parameter from `tensors` (by path); all must be present.
pub fn load<B: Backend, M: Module<B>>(module: M, layout: Layout, mut tensors: HashMap<String, HostTensor>) -> anyhow::Result<M> {
    let module = replace(module, layout, |path, _, _| match tensors.remove(path) {
        Some(t) => Ok(Some(t)),
        None => bail!("the weights have no tensor `{path}`"),
    })?;
    Ok(module)
}

/// Initial weights from `seed`, each parameter from its own stream keyed by
/// its path, so they are the same on every backend: Linear and embedding
/// weights and bare parameters (positions, class token) ~ truncated N(0, 0.02)
/// as in timm's ViT, biases 0, LayerNorm gains 1 and shifts 0. Parameters
/// whose path `keep` accepts keep their value (the logit scale and bias).
pub fn initialize<B: Backend, M: Module<B>>(module: M, seed: u64, keep: impl Fn(&str) -> bool) -> anyhow::Result<M> {
    replace(module, Layout::Burn, |path, role, shape| {
        if keep(path) {
            return Ok(None);
        }
        let n: usize = shape.iter().product();
        let values = match role {
            Role::Bias | Role::NormShift => vec![0.0; n],
            Role::NormGain => vec![1.0; n],
            Role::LinearWeight | Role::Embedding | Role::Other => {
                let mut rng = Rng::keyed(seed, &[Rng::key_of("init"), Rng::key_of(path)]);
                (0..n).map(|_| rng.truncated_normal(0.02) as f32).collect()
            }
        };
        Ok(Some(HostTensor { shape: shape.to_vec(), values }))
    })
}
