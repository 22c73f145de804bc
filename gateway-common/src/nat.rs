//! Masquerade (source NAT) toward the LAN: what the kernel keeps per translated flow, and the
//! pure parts of the translation (which port to try), shared with host tests.
//!
//! A flow from the tunnel to a masqueraded network leaves the LAN interface with the interface's
//! address as source and a port of the configured range (the original port when it is free).
//! Two entries per flow, inserted together: forward (the original tuple → the translated source)
//! and reverse (the translated tuple, seen from the LAN → the original source). The policy and
//! conntrack only ever see the original tuple.

use crate::{assert_size, user_pod};

/// One side of a translation: `local` is the address and port on the gateway's side (the peer's
/// original source, or the LAN address and NAT port), `remote` the LAN host's. 8-aligned: the
/// kernel compares keys a word at a time.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatKey {
    /// As on the wire; IPv4 in the first four bytes.
    pub local: [u8; 16],
    pub remote: [u8; 16],
    /// TCP/UDP ports; for ICMP echo both hold the identifier.
    pub local_port: u16,
    pub remote_port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
assert_size!(NatKey, 40);

/// What a key translates to: the other side's local address and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatTarget {
    pub addr: [u8; 16],
    pub port: u16,
    /// 1 once the LAN host has answered the flow (both of the translation's entries say so): a
    /// translation that was replied to is never evicted to make room (`nat_table`).
    pub replied: u8,
    pub _pad: [u8; 5],
    /// Refreshed by the flow's packets; a target idle past [`NatSettings`]' timeout for its
    /// protocol is free again.
    pub last_seen_ns: u64,
}
assert_size!(NatTarget, 32);

/// The masquerade address of a LAN interface (absent: the interface does not masquerade).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatInterface {
    pub v4: [u8; 4],
    pub v6: [u8; 16],
    pub has_v4: u8,
    pub has_v6: u8,
    pub _pad: [u8; 2],
}
assert_size!(NatInterface, 24);

/// Port range and idle timeouts (seconds) of translations: at least RFC 4787's 2 minutes for
/// UDP and RFC 5382's 2 h 4 min for established TCP (4 min while opening or closing).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatSettings {
    pub port_min: u16,
    pub port_max: u16,
    pub tcp_established: u32,
    pub tcp_transitory: u32,
    pub udp: u32,
    pub icmp: u32,
    pub _pad: u32,
}
assert_size!(NatSettings, 24);

pub const DEFAULT_PORT_MIN: u16 = 20_000;
pub const DEFAULT_PORT_MAX: u16 = 29_999;

impl Default for NatSettings {
    fn default() -> Self {
        NatSettings {
            port_min: DEFAULT_PORT_MIN,
            port_max: DEFAULT_PORT_MAX,
            tcp_established: 7_440,
            tcp_transitory: 240,
            udp: 120,
            icmp: 60,
            _pad: 0,
        }
    }
}

user_pod!(NatKey, NatTarget, NatInterface, NatSettings, NatPrefix);

/// A masqueraded destination network: an LPM-trie key over an IPv6 address, IPv4 mapped into
/// ::ffff:0:0/96 (so one trie holds both families).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatPrefix {
    pub addr: [u8; 16],
}
assert_size!(NatPrefix, 16);

/// Prefix bits of an IPv4 network in the mapped form.
pub const V4_MAPPED_PREFIX_BITS: u32 = 96;

/// An address as the masquerade trie keys it.
#[inline(always)]
pub fn mapped(family_v4: bool, addr: &[u8; 16]) -> [u8; 16] {
    if !family_v4 {
        return *addr;
    }
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3],
    ]
}

/// Attempts at a free port before the packet is dropped as `nat_exhausted`.
pub const PORT_ATTEMPTS: u32 = 8;

/// The port to try at `attempt` (0-based): the original one when the range holds it, then
/// ports spread over the range by `random` (a fresh random number per attempt).
#[inline(always)]
pub const fn candidate_port(original: u16, attempt: u32, random: u32, min: u16, max: u16) -> u16 {
    if attempt == 0 && original >= min && original <= max {
        return original;
    }
    let span = (max as u32).saturating_sub(min as u32) + 1;
    min + (random % span) as u16
}

/// Idle timeout (nanoseconds) of a translation of `proto` in a given TCP phase.
#[inline(always)]
pub const fn timeout_ns(s: &NatSettings, proto: u8, tcp_established: bool) -> u64 {
    let secs = match proto {
        6 => {
            if tcp_established {
                s.tcp_established
            } else {
                s.tcp_transitory
            }
        }
        17 => s.udp,
        _ => s.icmp,
    };
    secs as u64 * 1_000_000_000
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn the_original_port_is_kept_when_the_range_holds_it() {
        assert_eq!(candidate_port(25_000, 0, 7, 20_000, 29_999), 25_000);
        // Outside the range, or after a collision: spread over the range.
        let p = candidate_port(40_000, 0, 12_345, 20_000, 29_999);
        assert_eq!(p, 20_000 + 2_345);
        assert_eq!(candidate_port(25_000, 1, 9_999, 20_000, 29_999), 29_999);
        assert_eq!(candidate_port(25_000, 1, 10_000, 20_000, 29_999), 20_000);
        // A one-port range, and the whole port space.
        assert_eq!(candidate_port(5, 3, 0xffff_ffff, 7_000, 7_000), 7_000);
        assert_eq!(
            candidate_port(5, 1, 70_000, 0, 65_535),
            (70_000 % 65_536) as u16
        );
    }

    #[test]
    fn retries_cover_the_range_evenly() {
        let mut seen = std::collections::HashSet::new();
        let mut x: u32 = 1;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let p = candidate_port(1, 1, x, 20_000, 20_999);
            assert!((20_000..=20_999).contains(&p));
            seen.insert(p);
        }
        assert_eq!(seen.len(), 1_000);
    }

    #[test]
    fn timeouts_meet_the_rfcs() {
        let s = NatSettings::default();
        assert!(timeout_ns(&s, 17, false) >= 120 * 1_000_000_000);
        assert!(timeout_ns(&s, 6, true) >= (2 * 3600 + 4 * 60) * 1_000_000_000);
        assert_eq!(timeout_ns(&s, 6, false), 240 * 1_000_000_000);
    }

    #[test]
    fn ipv4_networks_are_mapped_into_one_trie() {
        let a = [198, 18, 10, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            mapped(true, &a),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 10, 10]
        );
        assert_eq!(mapped(false, &a), a);
    }
}
