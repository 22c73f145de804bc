//! The gateway's controller: policy model and compiler, the loader that puts the kernel programs
//! on interfaces, metrics, and the lab that demonstrates and tests it all.

pub mod cli;
pub mod lab;
pub mod management_server;
pub mod metrics;
pub mod policy;
pub mod runner;
pub mod status;
pub mod sync;
pub mod compile;
pub mod config;
pub mod dataplane;
pub mod packets;
