//! Settings the controller writes once at start, and the active-policy selector it flips.

use crate::{assert_size, user_pod};

/// Which policy slot packets use. Written with one aligned 8-byte store, read once per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ActivePolicy {
    pub slot: u32,
    /// Increases with every applied policy; conntrack entries re-check their flow when it changed.
    pub generation: u32,
}
assert_size!(ActivePolicy, 8);

pub const FLAG_CONNTRACK: u32 = 1;
/// Accepted LAN traffic may be forwarded in XDP to interfaces in the forward-ports map.
pub const FLAG_XDP_FORWARD: u32 = 2;
/// Accepted traffic from the tunnel whose route leads out of a LAN interface is forwarded in TC
/// (FIB lookup, neighbour by the kernel, redirect) instead of through the kernel's IP forwarding.
pub const FLAG_TC_FORWARD: u32 = 4;
/// Some LAN interface masquerades: only then does the LAN hook look for translations (a map
/// lookup it spares every packet otherwise).
pub const FLAG_MASQUERADE: u32 = 8;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub flags: u32,
    pub chunks_per_slot: u32,
    pub rules_per_slot: u32,
    /// IPv4 overlay network and mask, host byte order. LAN traffic to it is policed.
    pub overlay_v4_net: u32,
    pub overlay_v4_mask: u32,
    /// IPv6 overlay network and mask as on the wire; ignored unless
    /// `overlay_v6_enabled` is 1.
    pub overlay_v6_enabled: u32,
    pub overlay_v6_net: [u8; 16],
    pub overlay_v6_mask: [u8; 16],
    pub timeouts: Timeouts,
}

impl Settings {
    /// Whether an IPv4 address (host byte order) is in the overlay.
    #[inline(always)]
    pub fn in_overlay_v4(&self, addr: u32) -> bool {
        addr & self.overlay_v4_mask == self.overlay_v4_net
    }
}

/// Idle timeouts in seconds.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Deserialize, serde::Serialize))]
#[cfg_attr(feature = "user", serde(deny_unknown_fields, default))]
pub struct Timeouts {
    pub tcp_syn: u32,
    pub tcp_established: u32,
    pub tcp_closing: u32,
    pub udp: u32,
    pub udp_stream: u32,
    pub icmp: u32,
    pub other: u32,
    pub fragment: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_syn: 60,
            tcp_established: 86_400,
            tcp_closing: 30,
            udp: 30,
            udp_stream: 180,
            icmp: 30,
            other: 60,
            fragment: 30,
        }
    }
}

assert_size!(Timeouts, 32);
assert_size!(Settings, 88);
user_pod!(ActivePolicy, Settings);
