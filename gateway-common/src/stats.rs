//! Per-CPU counters by hook and reason, and per rule.

use crate::{assert_size, user_pod};

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
assert_size!(Counter, 16);
user_pod!(Counter);

/// Where a packet met a program.
pub const HOOK_TUNNEL_INGRESS: u32 = 0;
pub const HOOK_TUNNEL_EGRESS: u32 = 1;
pub const HOOK_LAN: u32 = 2;
pub const HOOKS: u32 = 3;
pub const HOOK_NAMES: [&str; HOOKS as usize] = ["tunnel_ingress", "tunnel_egress", "lan"];

/// Why a packet got its verdict. Reasons below `FIRST_DROP_REASON` let the packet through.
pub mod reason {
    pub const PASS_NON_IP: u32 = 0;
    pub const PASS_NOT_OVERLAY: u32 = 1;
    pub const ACCEPT_POLICY: u32 = 2;
    pub const ACCEPT_ESTABLISHED: u32 = 3;
    pub const ACCEPT_RELATED: u32 = 4;
    pub const ACCEPT_FRAGMENT: u32 = 5;
    pub const ACCEPT_OUTBOUND: u32 = 6;
    /// The link's control traffic on Ethernet hooks: IPv6 neighbour discovery, MLD and IGMP.
    pub const PASS_NEIGHBOR_DISCOVERY: u32 = 7;
    /// Not a verdict: packets of masqueraded flows whose source was translated leaving a LAN
    /// interface, and whose destination was translated back arriving on it.
    pub const NAT_MASQUERADED: u32 = 8;
    pub const NAT_UNMASQUERADED: u32 = 9;
    /// Not a verdict: of the packets accepted from the tunnel, those forwarded in TC to a LAN
    /// interface (counted a second time).
    pub const TC_FORWARDED: u32 = 10;
    /// Not a verdict: of the packets accepted on a hook that forwards (XDP on a LAN interface,
    /// TC with `tunnel_forward: tc`), those the program handed to the kernel unchanged, for it
    /// to forward or deliver: no route or neighbour yet, TTL about to expire, larger than the
    /// egress MTU, VLAN tags, an egress the gateway does not forward to, traffic to the host
    /// itself (counted a second time).
    pub const LEFT_TO_KERNEL: u32 = 11;
    /// Not a verdict: TCP SYNs crossing the tunnel whose MSS option was lowered to what the
    /// tunnel carries (counted a second time).
    pub const MSS_CLAMPED: u32 = 12;
    /// Not a verdict: SYNs whose options could not be read or rewritten; they pass unchanged.
    pub const MSS_NOT_CLAMPED: u32 = 13;
    /// Not a verdict: of the packets accepted on an XDP-forwarding interface, those left to the
    /// kernel because their TCP/UDP checksum is only begun (a local sender's offload, which
    /// only the kernel path completes); counted a second time.
    pub const KERNEL_FORWARDED_PARTIAL_CHECKSUM: u32 = 14;
    /// Not a verdict: of the packets accepted, those forwarded in XDP (counted a second time).
    pub const XDP_FORWARDED: u32 = 15;
    pub const FIRST_DROP_REASON: u32 = 16;
    pub const DROP_POLICY: u32 = 16;
    pub const DROP_DEFAULT: u32 = 17;
    pub const DROP_TRUNCATED: u32 = 18;
    pub const DROP_BAD_HEADER: u32 = 19;
    pub const DROP_VLAN_DEPTH: u32 = 20;
    pub const DROP_EXT_LIMIT: u32 = 21;
    pub const DROP_EXT_UNKNOWN: u32 = 22;
    pub const DROP_FRAG_NO_VERDICT: u32 = 23;
    pub const DROP_FRAG_DENIED: u32 = 24;
    pub const DROP_FRAG_TINY: u32 = 25;
    pub const DROP_ICMP_UNRELATED: u32 = 26;
    pub const DROP_REVOKED: u32 = 27;
    pub const DROP_INTERNAL: u32 = 28;
    /// The headers exist but could not be made readable (the kernel refused to pull them).
    pub const DROP_NOT_LINEAR: u32 = 29;
    /// No free port for a new masqueraded flow (or its translation could not be recorded).
    pub const DROP_NAT_EXHAUSTED: u32 = 30;
    /// TCP/UDP to a masquerade address and port that no translation holds.
    pub const DROP_NAT_NO_MAPPING: u32 = 31;
    pub const SLOTS: u32 = 32;
}

/// Metric label of each reason (empty: unused slot).
pub const REASON_NAMES: [&str; reason::SLOTS as usize] = [
    "non_ip",
    "not_overlay",
    "policy",
    "established",
    "related",
    "fragment",
    "outbound",
    "neighbor_discovery",
    "masqueraded",
    "unmasqueraded",
    "tc_forwarded",
    "left_to_kernel",
    "mss_clamped",
    "mss_unreadable",
    "partial_checksum",
    "xdp_forwarded",
    "policy",
    "default_deny",
    "truncated",
    "bad_header",
    "vlan_depth",
    "ext_header_limit",
    "ext_header_unknown",
    "fragment_no_verdict",
    "fragment_denied",
    "fragment_tiny",
    "icmp_unrelated",
    "revoked",
    "internal",
    "headers_not_linear",
    "nat_exhausted",
    "nat_no_mapping",
];

pub const fn stats_index(hook: u32, reason: u32) -> u32 {
    hook * reason::SLOTS + reason
}

pub const STATS_ENTRIES: u32 = HOOKS * reason::SLOTS;

/// Live entries a flow table gave up to make room for a new one (`buckets::claim`; entries no
/// longer live are not counted): per-CPU counters, two per table, by whether the entry given
/// up had been answered. The masquerade's count entries of either of its tables (a flow whose
/// entries were both given up counts twice); it never gives up an answered translation, so
/// its second counter stays 0 (a bucket full of those drops the new flow: `nat_exhausted`).
pub mod evicted {
    /// Where a table's two counters start: `+ 0` unanswered, `+ 1` answered.
    pub const CONNTRACK: u32 = 0;
    pub const NAT: u32 = 2;
    pub const SLOTS: u32 = 4;
    /// (table, entry) labels of each counter.
    pub const NAMES: [(&str, &str); SLOTS as usize] = [
        ("conntrack", "unanswered"),
        ("conntrack", "answered"),
        ("nat", "unanswered"),
        ("nat", "answered"),
    ];
}

/// The metric's `verdict` label of a reason.
pub const fn verdict_label(r: u32) -> &'static str {
    if r == reason::XDP_FORWARDED || r == reason::TC_FORWARDED {
        // Counted again on top of the accept that let the packet through.
        "forwarded"
    } else if r == reason::KERNEL_FORWARDED_PARTIAL_CHECKSUM || r == reason::LEFT_TO_KERNEL {
        // Likewise: accepted, and forwarded by the kernel rather than in XDP.
        "to_kernel"
    } else if r == reason::NAT_MASQUERADED || r == reason::NAT_UNMASQUERADED {
        // Likewise: accepted packets, translated.
        "nat"
    } else if r == reason::MSS_CLAMPED || r == reason::MSS_NOT_CLAMPED {
        // Likewise: accepted SYNs, and what became of their MSS option.
        "mss"
    } else if r >= reason::FIRST_DROP_REASON {
        "drop"
    } else if r == reason::PASS_NON_IP
        || r == reason::PASS_NOT_OVERLAY
        || r == reason::PASS_NEIGHBOR_DISCOVERY
    {
        "pass"
    } else {
        "accept"
    }
}
