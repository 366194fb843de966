//! Pipeline files: syntax, axis templates, expansion into the instance DAG, keys.

pub mod claims;
pub mod diag;
pub mod expand;
pub mod key;
pub mod parse;
pub mod template;

use std::path::Path;

pub use diag::{Diagnostic, Diagnostics, SourceFile};
pub use expand::{Axes, Binding, Node, Plan};
pub use key::StageKey;
pub use parse::PipelineSpec;

/// Reads, parses and expands a pipeline file.
pub fn compile(path: &Path) -> Result<Plan, Diagnostics> {
    let file = SourceFile::read(path)?;
    compile_source(file)
}

/// Parses and expands `file`, and checks its claims against the instances it plans.
pub fn compile_source(file: SourceFile) -> Result<Plan, Diagnostics> {
    let plan = expand::expand(parse::parse(file)?)?;
    claims::check(&plan.spec)?;
    Ok(plan)
}
