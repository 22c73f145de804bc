//! The access policy: groups of addresses and the policies between them, as an operator writes
//! them (YAML, in the seed's format), validated, and flattened into [`Term`]s that both the
//! compiler and the reference evaluator read.

mod model;
pub mod reference;
pub mod yaml;
#[cfg(test)]
mod tests;

pub use model::*;
pub use yaml::{load_file, parse_str};
