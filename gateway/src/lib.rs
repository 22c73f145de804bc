//! The gateway's agent and command line: the configuration, the runner that keeps the data plane
//! in step with the policy (a file or a management service), metrics and status, and the demo.
//! The policy and its compiler live in `gateway-policy`, the kernel side in `gateway-dataplane`,
//! the WireGuard interface in `gateway-wireguard`, the lab in `gateway-testkit`.

pub mod cli;
pub mod config;
pub mod demo;
#[cfg(feature = "management-server")]
pub mod management_server;
pub mod metrics;
pub mod relay;
pub mod runner;
pub mod status;
pub mod sync;
pub mod tunnel;
