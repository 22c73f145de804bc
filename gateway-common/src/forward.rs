//! The forwarding paths' caches of FIB results: a direct-mapped per-CPU table (an array
//! lookup, where a hash map costs a hash of the key and a bucket walk on every packet).

use crate::{
    assert_size,
    hash::{fold_key, has_key_words, key_words, set_key_words},
    user_pod,
};

/// What a cached route is cached under: everything the FIB lookup it stands for was given
/// (the ingress interface, the family, the DSCP, the source and the destination), so rules
/// that route by source or DSCP keep applying to every packet, not only to the one that filled
/// the slot. Compared and written in place ([`RouteKey::holds`], [`RouteKey::set`]): no key is
/// built on the stack, where the relay's IPv6 path has no room for one.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RouteKey {
    pub ifindex: u32,
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u8,
    /// IPv4's type-of-service byte or IPv6's traffic class as the lookup was given it, ECN bits
    /// cleared (0 where not given).
    pub tos: u8,
    pub _pad: u16,
    /// The addresses' 32-bit words as the FIB lookup takes them (words, so that comparing them
    /// takes word loads); IPv4 in the first word, the rest zero.
    pub src: [u32; 4],
    pub dst: [u32; 4],
}
assert_size!(RouteKey, 40);

/// AF_INET, as route keys and FIB lookups name IPv4.
const AF_INET: u8 = 2;

/// An address's four 32-bit words, as the FIB lookup takes them.
#[inline(always)]
pub fn addr_words(a: &[u8; 16]) -> [u32; 4] {
    key_words(false, a)
}

impl RouteKey {
    /// Whether the slot holds the route of these lookup inputs. Of an IPv4 address only the
    /// first word is compared: it is all the FIB reads (and all the packet path's IPv4
    /// addresses hold), and the other 12 bytes cost 24 byte loads a packet.
    #[inline(always)]
    pub fn holds(&self, ifindex: u32, family: u8, tos: u8, src: &[u8; 16], dst: &[u8; 16]) -> bool {
        if self.ifindex != ifindex || self.family != family || self.tos != tos {
            return false;
        }
        let v4 = family == AF_INET;
        has_key_words(v4, &self.src, src) && has_key_words(v4, &self.dst, dst)
    }

    #[inline(always)]
    pub fn set(&mut self, ifindex: u32, family: u8, tos: u8, src: &[u8; 16], dst: &[u8; 16]) {
        self.ifindex = ifindex;
        self.family = family;
        self.tos = tos;
        self._pad = 0;
        set_key_words(family == AF_INET, &mut self.src, src);
        set_key_words(family == AF_INET, &mut self.dst, dst);
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FibRoute {
    pub expires_ns: u64,
    pub egress: u32,
    /// The longest packet (IP total length) the FIB lookup accepted for this route: longer
    /// ones are looked up again, so the MTU check stays with the kernel.
    pub max_len: u16,
    /// 1 where the egress interface takes multi-buffer frames redirected in XDP (see
    /// [`SLOT_TAKES_MULTI_BUFFER`]), else 0.
    pub multi_buffer: u16,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// The egress interface's slot in the forward-ports devmap.
    pub port: u32,
}
assert_size!(FibRoute, 32);

/// The top bit of a forward-slots value (by ifindex: the interface's slot in the forward-ports
/// devmap): the interface takes multi-buffer frames (a jumbo MTU's) redirected to it in XDP.
/// The kernel drops any other such redirect after the program has returned: before Linux 6.3
/// every one, from 6.3 on those to a driver that does not say NETDEV_XDP_ACT_NDO_XMIT_SG.
pub const SLOT_TAKES_MULTI_BUFFER: u32 = 1 << 31;

/// One slot of the XDP forwarding path's per-CPU route cache (the relay's too).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FibSlot {
    pub key: RouteKey,
    pub route: FibRoute,
}
assert_size!(FibSlot, 72);

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

/// One slot of the per-CPU TC route cache.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcRouteSlot {
    pub key: RouteKey,
    pub route: TcRoute,
}
assert_size!(TcRouteSlot, 72);

/// Slots per CPU (a power of two): destinations that collide evict each other, which costs
/// a FIB lookup, never a wrong route (the slot's key is compared in full).
pub const FIB_SLOTS: u32 = 4096;

/// The slot of a (source, destination) pair of `family` arriving on `ifindex`: their address
/// words and the interface, mixed (an IPv4 address's first word only, as the key holds it).
#[inline(always)]
pub fn route_slot(ifindex: u32, family: u8, src: &[u8; 16], dst: &[u8; 16]) -> u32 {
    let v4 = family == AF_INET;
    let (s, d) = (fold_key(v4, src), fold_key(v4, dst));
    let h = d ^ (ifindex ^ s.rotate_left(7)).rotate_left(16);
    crate::hash::mix32(h) & (FIB_SLOTS - 1)
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

user_pod!(RouteKey, FibRoute, FibSlot, TcRoute, TcRouteSlot);

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn a_route_key_holds_exactly_the_lookup_inputs_it_was_set_from() {
        let src = [0xfd, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let dst = [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let mut k = RouteKey::default();
        assert!(!k.holds(7, 10, 0, &src, &dst));
        k.set(7, 10, 0x10, &src, &dst);
        assert!(k.holds(7, 10, 0x10, &src, &dst));
        assert_eq!(
            (k.src, k.dst, k.ifindex, k.family, k.tos),
            (addr_words(&src), addr_words(&dst), 7, 10, 0x10)
        );
        assert!(!k.holds(8, 10, 0x10, &src, &dst));
        assert!(!k.holds(7, 2, 0x10, &src, &dst));
        assert!(!k.holds(7, 10, 0, &src, &dst));
        // Any byte of either IPv6 address.
        for i in 0..16 {
            let mut other = src;
            other[i] ^= 1;
            assert!(!k.holds(7, 10, 0x10, &other, &dst), "source byte {i}");
            assert!(!k.holds(7, 10, 0x10, &src, &other), "destination byte {i}");
            let mut other = dst;
            other[i] ^= 0x80;
            assert!(!k.holds(7, 10, 0x10, &src, &other), "destination byte {i}");
        }
    }

    #[test]
    fn an_ipv4_route_key_holds_the_four_bytes_the_fib_reads() {
        let src = [100, 64, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let dst = [198, 19, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut k = RouteKey::default();
        k.set(7, 2, 0, &src, &dst);
        assert_eq!((k.src, k.dst), (addr_words(&src), addr_words(&dst)));
        assert!(k.holds(7, 2, 0, &src, &dst));
        for i in 0..4 {
            let mut other = src;
            other[i] ^= 1;
            assert!(!k.holds(7, 2, 0, &other, &dst), "source byte {i}");
            assert!(!k.holds(7, 2, 0, &src, &other), "destination byte {i}");
        }
        // Bytes past an IPv4 address are no lookup input (the FIB reads four), nor are they
        // kept: the key holds what the lookup was given.
        let mut tail = src;
        tail[9] = 1;
        k.set(7, 2, 0, &tail, &dst);
        assert_eq!(k.src, addr_words(&src));
        assert!(k.holds(7, 2, 0, &src, &dst) && k.holds(7, 2, 0, &tail, &dst));
        assert_eq!(route_slot(7, 2, &src, &dst), route_slot(7, 2, &tail, &dst));
    }

    #[test]
    fn route_slots_spread_sources_of_one_destination() {
        let dst = [198, 19, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        for byte in [0, 1, 2, 3] {
            let mut used = std::collections::HashSet::new();
            for i in 0..=255u8 {
                let mut src = [100, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                src[byte] = i;
                used.insert(route_slot(7, 2, &src, &dst));
            }
            assert!(used.len() > 230, "byte {byte}: {} slots", used.len());
        }
    }

    #[test]
    fn route_slots_spread_destinations_that_differ_in_any_byte() {
        for byte in [1, 2, 3] {
            let mut used = std::collections::HashSet::new();
            for i in 0..=255u8 {
                let mut dst = [198, 19, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                dst[byte] = i;
                used.insert(route_slot(
                    7,
                    2,
                    &[100, 64, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    &dst,
                ));
            }
            // 256 keys over 4,096 slots: a random function collides about 8 times.
            assert!(used.len() > 230, "byte {byte}: {} slots", used.len());
        }
    }
}
