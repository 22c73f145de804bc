//! The LAN hook's per-flow shortcut: for IPv4 TCP/UDP flows that the policy accepted (or, with
//! connection tracking on, that are established) and XDP forwarding redirected, the verdict and
//! the route in one slot, so that the flow's
//! next packets take one lookup and a short header check instead of the whole parse, policy
//! decision, masquerade check and route cache (the profile of the packet-rate benchmark: two
//! per-CPU caches, byte-wise address handling and the parse's scratch were most of the program's
//! time). The slot is only a memory of what the full path decided: it holds the policy
//! generation and the route's expiry the full path used, and every packet is checked against
//! both, so a policy change or a route older than a second sends the flow through the full
//! path again.

use crate::{assert_size, hash::mix32, user_pod};

/// One slot. A plain (not per-CPU) array holds `LAN_FLOW_SLOTS` slots per possible CPU, each
/// CPU in its own range: a per-CPU array would cost one more dependent load per packet (the
/// value's per-CPU pointer from a table as large as the slots).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LanFlow {
    /// The addresses as their bytes lie in the header, read as native words.
    pub src: u32,
    pub dst: u32,
    /// [`selector`]: destination port, protocol and DSCP.
    pub selector: u32,
    /// The interface the flow arrives on.
    pub ifindex: u32,
    /// The policy generation the verdict was decided under; 0 in a slot never filled.
    pub generation: u32,
    /// The deciding rule, for its counters (stateless filter; a tracked flow's entry holds its
    /// own, which the shortcut counts).
    pub rule: u32,
    /// The jiffy from which the route (below) must be looked up again: the route cache's
    /// deadline, converted when the slot was filled (crate::clock).
    pub expires_jiffies: u64,
    /// The egress interface's slot in the forward-ports devmap.
    pub port: u32,
    /// The longest IP datagram the route was looked up for: longer ones take the full path,
    /// which asks the FIB again (the egress MTU check stays the kernel's).
    pub max_len: u16,
    /// 1 where the egress interface takes multi-buffer frames redirected in XDP.
    pub multi_buffer: u16,
    /// The Ethernet header's destination and source addresses, as native words of their 12
    /// bytes (written to the frame in three stores).
    pub macs: [u32; 3],
    /// Packets this slot forwarded for the flow it holds, since the flow took the slot (the
    /// frames that filled or refilled it not included): what tests and benchmarks read to see
    /// the shortcut taken.
    pub hits: u32,
    pub _pad: [u32; 2],
}
assert_size!(LanFlow, 64);
user_pod!(LanFlow);

/// Slots per CPU (a power of two), direct-mapped: flows that collide evict each other, which
/// costs the full path, never a wrong decision (the key is compared in full).
pub const LAN_FLOW_SLOTS: u32 = 16384;

/// What the slot keys on besides the addresses and the interface: everything the policy
/// verdict (destination port, protocol) and the route (DSCP, without the ECN bits) depend on.
#[inline(always)]
pub fn selector(dport: u16, proto: u8, tos: u8) -> u32 {
    dport as u32 | (proto as u32) << 16 | ((tos & 0xfc) as u32) << 24
}

/// The slot of a flow within one CPU's range.
#[inline(always)]
pub fn slot(src: u32, dst: u32, selector: u32, ifindex: u32) -> u32 {
    let h = src ^ dst.rotate_left(16) ^ selector.rotate_left(8) ^ ifindex.rotate_left(24);
    mix32(h) & (LAN_FLOW_SLOTS - 1)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    #[test]
    fn selector_keeps_port_protocol_and_dscp_apart_and_drops_ecn() {
        assert_ne!(selector(53, 17, 0), selector(53, 6, 0));
        assert_ne!(selector(53, 17, 0), selector(54, 17, 0));
        assert_ne!(selector(53, 17, 0x04), selector(53, 17, 0x08));
        assert_eq!(selector(53, 17, 0x04), selector(53, 17, 0x07));
    }

    #[test]
    fn slots_spread_many_sources() {
        let mut used = std::collections::HashSet::new();
        let dst = u32::from_ne_bytes([198, 19, 1, 10]);
        for i in 0..4096u32 {
            let src = u32::from_ne_bytes((0xc612_0000u32 + i).to_be_bytes());
            used.insert(slot(src, dst, selector(53, 17, 0), 7));
        }
        // 4,096 keys in 16,384 slots: a random function leaves about 3,600 distinct.
        assert!(used.len() > 3_400, "{} slots used", used.len());
    }
}
