//! What tests, benchmarks and the demo share: network namespaces and the seed lab with real
//! hosts and the real `gateway` processes in the middle, traffic and iperf3 runs, packets built
//! byte by byte, real WireGuard peers (wireguard-go), and a harness that runs the kernel programs through BPF_PROG_TEST_RUN.

pub mod harness;
pub mod iperf;
pub mod management;
pub mod netns;
pub mod packets;
pub mod process;
pub mod topology;
pub mod traffic;
pub mod wireguard;
