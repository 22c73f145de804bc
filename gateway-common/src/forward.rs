//! The forwarding paths' caches of FIB results: a direct-mapped per-CPU table (an array
//! lookup, where a hash map costs a hash of the key and a bucket walk on every packet).

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
    /// The egress interface's slot in the forward-ports devmap.
    pub port: u32,
}
assert_size!(FibRoute, 32);

/// One slot of the per-CPU FIB cache: the destination it holds, and its route.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FibSlot {
    pub key: FibKey,
    pub route: FibRoute,
}
assert_size!(FibSlot, 56);

/// A route as TC forwarding uses it: the egress interface, what it is to forwarding (its
/// `TC_PORT_*` kind, 0 for none of the gateway's), and the next hop the neighbour redirect
/// resolves (the FIB's gateway, or the destination itself on a connected network). Given the
/// next hop, the kernel skips a route lookup of its own on every redirected packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcRoute {
    pub expires_ns: u64,
    pub egress: u32,
    /// As in [`FibRoute`]: longer packets are looked up again.
    pub max_len: u16,
    pub kind: u8,
    /// AF_INET (2) or AF_INET6 (10): an IPv4 route may have an IPv6 next hop (RFC 5549).
    pub nh_family: u8,
    /// The next hop as on the wire; IPv4 in the first word.
    pub nh: [u32; 4],
}
assert_size!(TcRoute, 32);

/// What a TC route is cached under: the ingress interface and both addresses, because the FIB
/// lookup it stands for passes the source too (rules that route by source keep working).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcRouteKey {
    pub ifindex: u32,
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u32,
    /// As on the wire; IPv4 uses the first four bytes.
    pub src: [u8; 16],
    pub dst: [u8; 16],
}
assert_size!(TcRouteKey, 40);

/// One slot of the per-CPU TC route cache.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcRouteSlot {
    pub key: TcRouteKey,
    pub route: TcRoute,
}
assert_size!(TcRouteSlot, 72);

/// Slots per CPU (a power of two): destinations that collide evict each other, which costs
/// a FIB lookup, never a wrong route (the slot's key is compared in full).
pub const FIB_SLOTS: u32 = 4096;

/// The slot of a destination: its address words and the ingress interface, mixed.
#[inline(always)]
pub fn fib_slot(ifindex: u32, dst: &[u8; 16]) -> u32 {
    crate::hash::mix32(crate::hash::fold_addr(dst) ^ ifindex.rotate_left(16)) & (FIB_SLOTS - 1)
}

/// The TC route cache's slot of a (source, destination) pair arriving on `ifindex`.
#[inline(always)]
pub fn tc_route_slot(ifindex: u32, src: &[u8; 16], dst: &[u8; 16]) -> u32 {
    fib_slot(ifindex ^ crate::hash::fold_addr(src).rotate_left(7), dst)
}

/// What an interface is to forwarding in TC (its value in the TC ports map): accepted traffic
/// from a tunnel goes out of LAN ports, accepted traffic arriving on a TC-attached LAN
/// interface (replies, LAN-initiated flows) out of tunnel ports.
pub const TC_PORT_LAN: u8 = 1;
pub const TC_PORT_TUNNEL: u8 = 2;

/// Interfaces that take XDP-forwarded traffic: at most this many (`forward: xdp`).
pub const FORWARD_PORTS_MAX: u32 = 64;

/// How long a cached route is used before the FIB is asked again.
pub const FIB_CACHE_NS: u64 = 1_000_000_000;

user_pod!(FibKey, FibRoute, FibSlot, TcRoute, TcRouteKey, TcRouteSlot);

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn tc_route_slots_spread_sources_of_one_destination() {
        let dst = [198, 19, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        for byte in [0, 1, 2, 3] {
            let mut used = std::collections::HashSet::new();
            for i in 0..=255u8 {
                let mut src = [100, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                src[byte] = i;
                used.insert(tc_route_slot(7, &src, &dst));
            }
            assert!(used.len() > 230, "byte {byte}: {} slots", used.len());
        }
    }

    #[test]
    fn fib_slots_spread_destinations_that_differ_in_any_byte() {
        for byte in [1, 2, 3] {
            let mut used = std::collections::HashSet::new();
            for i in 0..=255u8 {
                let mut dst = [198, 19, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                dst[byte] = i;
                used.insert(fib_slot(7, &dst));
            }
            // 256 keys over 4,096 slots: a random function collides about 8 times.
            assert!(used.len() > 230, "byte {byte}: {} slots", used.len());
        }
    }
}
