//! The access policy, pure (no kernel, no aya): groups of addresses and the policies between
//! them, as an operator writes them (YAML, in the seed's format), validated, and flattened into
//! [`Term`]s that both the compiler ([`compile`]: the kernel's lookup tables) and the reference
//! evaluator read.

pub mod compile;
mod model;
pub mod reference;
#[cfg(test)]
mod tests;
pub mod yaml;

pub use model::*;
pub use yaml::{load_file, parse_str};
