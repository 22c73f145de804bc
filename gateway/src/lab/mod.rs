//! A lab in network namespaces: the seed-000 topology with real hosts, real sockets and the
//! real `gateway run` in the middle. Used by `gateway demo` and by the integration tests.

pub mod demo;
pub mod iperf;
pub mod netns;
pub mod management;
pub mod process;
pub mod topology;
pub mod traffic;
