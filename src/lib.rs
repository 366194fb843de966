//! ablate: declarative ablation pipelines for language–image alignment research.
//!
//! See ARCHITECTURE.md for the bird's-eye view and the code map.

pub mod cli;
pub mod exec;
pub mod freshness;
pub mod pipeline;
pub mod stages;
pub mod store;
pub mod text;
