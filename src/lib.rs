//! ablate: declarative ablation pipelines for language–image alignment research.
//!
//! See ARCHITECTURE.md for the bird's-eye view and the code map.

pub mod alloc;
pub mod chart;
pub mod claims;
pub mod cli;
pub mod dashboard;
pub mod device;
pub mod echo;
pub mod eval;
pub mod exec;
pub mod file_fingerprint;
pub mod filter;
pub mod freshness;
pub mod gpu;
pub mod images;
pub mod loss;
pub mod model;
pub mod pipeline;
pub mod pivot;
pub mod precision;
pub mod process_group;
pub mod rng;
pub mod slurm_commands;
pub mod stages;
pub mod store;
pub mod tensor_file;
pub mod text;
pub mod train;
pub mod web;
