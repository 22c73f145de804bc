//! The XDP forwarding path's cache of FIB results.

use crate::{assert_size, user_pod};

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FibKey {
    pub ifindex: u32,
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u32,
    /// Destination as on the wire; IPv4 uses the first four bytes.
    pub dst: [u8; 16],
}
assert_size!(FibKey, 24);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FibRoute {
    pub expires_ns: u64,
    pub egress: u32,
    /// The longest packet (IP total length) the FIB lookup accepted for this route: longer
    /// ones are looked up again, so the MTU check stays with the kernel.
    pub max_len: u16,
    pub _pad: u16,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub _pad2: [u8; 4],
}
assert_size!(FibRoute, 32);

/// How long a cached route is used before the FIB is asked again.
pub const FIB_CACHE_NS: u64 = 1_000_000_000;

user_pod!(FibKey, FibRoute);
