//! The tunnel's per-flow shortcut (TC ingress, IPv4 TCP/UDP, connection tracking on): once the
//! full path (parse, conntrack, masquerade, TC forwarding) has forwarded a packet of an
//! established flow out of a LAN interface, the flow's key, its rewrite and its route sit in one
//! slot, so the flow's next packets take one array lookup and a header check instead of the
//! parse, the conntrack and translation lookups, the route cache and five checksum helpers (the
//! profile of the masquerade benchmark's established flows: those were most of the program).
//!
//! The slot stands for the full path only within the tick (`NatMemo::TICK_SHIFT`, a quarter
//! second) in which the full path confirmed the flow: its conntrack entry live, admitted under
//! the current policy generation and in a state a plain packet does not move, and its
//! translation confirmed by the tables (`NatMemo`). The first packet of each later tick takes
//! the full path again, which moves the conntrack entry's clock, refreshes the translation and
//! refills the slot: the tables see a flow in use several times a second, as with the memo, and
//! a policy change (another generation) is seen on the next packet.

use crate::{
    assert_size, checksum::fold, conntrack::NatMemo, hash::mix32, turn_flow::halves, user_pod,
};

/// One slot. A plain array holds [`TUNNEL_FLOW_SLOTS`] per possible CPU, each CPU in its own
/// range (as the other shortcuts' slots).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelFlow {
    /// When the route must be looked up again, as the TC route cache has it.
    pub expires_ns: u64,
    /// The key: the packet's addresses and ports as their bytes lie in the header, read as
    /// native words; [`selector`]; the interface it arrives on.
    pub src: u32,
    pub dst: u32,
    pub ports: u32,
    pub selector: u32,
    pub ifindex: u32,
    /// The policy generation the flow was confirmed under; 0 in a slot never filled.
    pub generation: u32,
    /// The tick ([`tick`]) in which the full path confirmed the flow.
    pub tick: u32,
    /// The flow's deciding rule (its conntrack entry's), for the rule's counters.
    pub rule: u32,
    /// The egress interface and the IPv4 next hop the FIB chose (as on the wire).
    pub egress: u32,
    pub next_hop: u32,
    /// The masquerade: the new source address and port as they lie in the header (native
    /// reads of their bytes); equal to the packet's where the route does not masquerade.
    pub new_src: u32,
    pub new_sport: u16,
    /// The longest IP datagram the route was looked up for.
    pub max_len: u16,
    /// The source address change's share of the IP header checksum update ([`addr_delta`]).
    pub ip_delta: u16,
    /// 1 where the flow is masqueraded.
    pub translated: u16,
    /// Packets this slot forwarded for its flow since the flow took it (not the ones that
    /// filled it): what tests and benchmarks read to see the shortcut taken.
    pub hits: u32,
}
assert_size!(TunnelFlow, 64);
user_pod!(TunnelFlow);

/// Slots per CPU (a power of two), direct-mapped: flows that collide evict each other, which
/// costs the full path, never a wrong rewrite (the key is compared in full).
pub const TUNNEL_FLOW_SLOTS: u32 = 16384;

/// What the slot keys on besides addresses, ports and interface: the protocol and the DSCP
/// (the route depends on it), without the ECN bits.
#[inline(always)]
pub const fn selector(proto: u8, tos: u8) -> u32 {
    proto as u32 | ((tos & 0xfc) as u32) << 8
}

/// The tick of a clock reading: the unit within which the slot stands for the full path.
#[inline(always)]
pub const fn tick(now_ns: u64) -> u32 {
    (now_ns >> NatMemo::TICK_SHIFT) as u32
}

/// The slot of a flow within one CPU's range.
#[inline(always)]
pub fn slot(src: u32, dst: u32, ports: u32, ifindex: u32) -> u32 {
    // Two rounds, as the relay's slots: a port that counts up with the source address's last
    // byte would cancel it out in one.
    let addrs = mix32(src ^ dst.rotate_left(16));
    mix32(addrs ^ ports ^ ifindex.rotate_left(24)) & (TUNNEL_FLOW_SLOTS - 1)
}

/// What replacing the 32-bit word `old` by `new` adds to a one's complement sum (RFC 1624:
/// ~m + m'), folded; both as native reads of the header's bytes, and so is the result.
#[inline(always)]
pub const fn addr_delta(old: u32, new: u32) -> u16 {
    fold(halves(!old) + halves(new))
}

/// A header checksum field (native read) after a change whose share is `delta`.
#[inline(always)]
pub const fn apply_delta(check: u16, delta: u16) -> u16 {
    !fold((!check) as u32 + delta as u32)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::test_kit::{Rng, internet_checksum};

    #[test]
    fn a_source_change_applied_as_a_delta_gives_the_recomputed_header_checksum() {
        let mut rng = Rng(0x7f10_2233);
        for _ in 0..20_000 {
            let mut h: [u8; 20] = rng.bytes();
            h[10] = 0;
            h[11] = 0;
            let check = internet_checksum(&h);
            h[10..12].copy_from_slice(&check.to_be_bytes());
            let old = u32::from_ne_bytes([h[12], h[13], h[14], h[15]]);
            let new_bytes = rng.u32().to_ne_bytes();
            let new = u32::from_ne_bytes(new_bytes);
            let field = u16::from_ne_bytes([h[10], h[11]]);
            let updated = apply_delta(field, addr_delta(old, new));
            h[12..16].copy_from_slice(&new_bytes);
            h[10..12].copy_from_slice(&updated.to_ne_bytes());
            // A header with a correct checksum sums to zero.
            assert_eq!(internet_checksum(&h), 0, "header {h:02x?}");
        }
    }

    #[test]
    fn slots_spread_many_sources_and_ports() {
        let mut used = std::collections::HashSet::new();
        let dst = u32::from_ne_bytes([198, 18, 10, 10]);
        for i in 0..4096u32 {
            let src = u32::from_ne_bytes((0x6440_0000u32 + (i & 63)).to_be_bytes());
            let ports = u32::from_ne_bytes([(i >> 6) as u8, 7, 0, 53]);
            used.insert(slot(src, dst, ports, 7));
        }
        // 4,096 keys in 16,384 slots: a random function leaves about 3,600 distinct.
        assert!(used.len() > 3_400, "{} slots used", used.len());
    }
}
