//! The relay's per-flow shortcut (IPv4): once the full fast path (`turn`) has relayed a frame of
//! a bound channel or a bound peer, the flow's key, its binding's rewrite and its route live in
//! one slot, with the parts of both checksums that only depend on the flow summed ahead. The
//! flow's next frames are checked with word loads and rewritten with word stores, where the full
//! path hashes and compares a binding cache and a route cache entry and builds each header byte
//! by byte (the profile of the relay benchmark at saturation: the program a fifth of the core).
//!
//! The slot is only a memory of what the full path did: it carries the bindings' generation tag
//! and the route's expiry the full path used, and every frame is checked against both, so a
//! binding change (userspace bumps the generation) or a route older than a second sends the
//! flow through the full path again.

use crate::{
    assert_size,
    checksum::{fold, udp_field},
    hash::mix32,
    user_pod,
};

/// One slot. A plain array holds [`TURN_FLOW_SLOTS`] per possible CPU, each CPU in its own range
/// (as the LAN shortcut's slots: no per-CPU pointer to load first).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TurnFlow {
    /// The bindings' generation plus one (as [`crate::turn::CachedBinding`]); 0: never filled.
    pub tag: u64,
    /// The jiffy from which the full path must decide again: the earlier of the route cache's
    /// deadline and the end of the relay's sign-of-life window, converted when the slot was
    /// filled (crate::clock).
    pub expires_jiffies: u64,
    /// The key: the frame's addresses and ports as their bytes lie in the header, read as
    /// native words; the channel number (host order) of ChannelData from a client, 0 for a
    /// peer's datagram; the interface it arrives on.
    pub src: u32,
    pub dst: u32,
    pub ports: u32,
    pub ifindex: u32,
    pub channel: u16,
    /// The longest IP datagram (after the rewrite) the route was looked up for.
    pub max_len: u16,
    /// The interface the rewritten frame leaves by (the arrival interface: sent back, XDP_TX).
    pub egress: u32,
    /// The rewrite: the new addresses and ports as native words, the Ethernet addresses as
    /// `packet::mac_words` lays them out.
    pub new_src: u32,
    pub new_dst: u32,
    pub new_ports: u32,
    pub macs: [u32; 3],
    /// The flow's constant share of the UDP checksum update ([`udp_delta`]) and of the new IP
    /// header's checksum ([`ip_base`]).
    pub udp_delta: u16,
    pub ip_base: u16,
    /// The channel the client's ChannelData carries (a peer's datagram); 0 toward a peer.
    pub out_channel: u16,
    pub _pad: u16,
    /// The binding's counter slot (`turn::counter_index`).
    pub binding: u32,
    /// Frames this slot relayed for its flow since the flow took it (not the ones that filled
    /// it): what tests and benchmarks read to see the shortcut taken.
    pub hits: u32,
}
assert_size!(TurnFlow, 80);
user_pod!(TurnFlow);

/// Slots per CPU (a power of two), direct-mapped: flows that collide evict each other, which
/// costs the full path, never a wrong rewrite (the key is compared in full).
pub const TURN_FLOW_SLOTS: u32 = 4096;

/// The slot of a flow within one CPU's range.
#[inline(always)]
pub fn slot(src: u32, dst: u32, ports: u32, channel: u16, ifindex: u32) -> u32 {
    // Mixed in two rounds: XORed in one, a port that counts up with the source address's last
    // byte (one host per client port, as load generators make them) cancels it out.
    let addrs = mix32(src ^ dst.rotate_left(16));
    mix32(addrs ^ ports ^ (channel as u32).rotate_left(8) ^ ifindex.rotate_left(24))
        & (TURN_FLOW_SLOTS - 1)
}

/// The sum of a 32-bit value's two 16-bit halves.
#[inline(always)]
pub const fn halves(v: u32) -> u32 {
    (v >> 16) + (v & 0xffff)
}

/// What removing 16-bit words whose sum is `sum` adds to an update (RFC 1624: each word
/// removed adds its complement), for `count` words.
#[inline(always)]
const fn removed(sum: u32, count: u32) -> u32 {
    count * 0xffff - sum
}

/// The flow's constant share of the UDP checksum update: the frame's ports and addresses go
/// (`addrs`: the sum of their 16-bit words), the rewrite's come, and so does a channel number:
/// ChannelData from a client loses its channel (`channel_out`) on the way to the peer, a peer's
/// datagram gains one (`channel_in`) on the way to the client (the other is 0). Everything is
/// host order; ports as (source << 16 | destination).
#[inline(always)]
pub const fn udp_delta(
    channel_out: u16,
    channel_in: u16,
    (ports, addrs): (u32, u32),
    (new_ports, new_addrs): (u32, u32),
) -> u16 {
    fold(
        removed(channel_out as u32, 1)
            + removed(halves(ports), 2)
            + removed(addrs, 4)
            + channel_in as u32
            + halves(new_ports)
            + new_addrs,
    )
}

/// The UDP checksum field after ChannelData of `clen` bytes in a datagram of UDP length `ulen`
/// (unpadded: `clen + 12`) lost its 4-byte header: the channel's length and both UDP length
/// words (the header's and the pseudo-header's) go, the new length comes twice.
#[inline(always)]
pub const fn to_peer_check(check: u16, delta: u16, clen: u16, ulen: u16) -> u16 {
    let new_ulen = clen as u32 + 8;
    let sum = (!check) as u32 + delta as u32 + (!clen) as u32 + 2 * (!ulen) as u32 + 2 * new_ulen;
    udp_field(check, !fold(sum))
}

/// The UDP checksum field after a peer's datagram of UDP length `ulen` gained the 4-byte
/// ChannelData header: its data length comes, both length words change by four.
#[inline(always)]
pub const fn to_client_check(check: u16, delta: u16, ulen: u16) -> u16 {
    let sum = (!check) as u32
        + delta as u32
        + 2 * (!ulen) as u32
        + (ulen as u32 - 8)
        + 2 * (ulen as u32 + 4);
    udp_field(check, !fold(sum))
}

/// The flow's constant share of the new IP header's checksum: version and header length, TTL
/// `hops` and protocol UDP, the new addresses (sum of their 16-bit words).
#[inline(always)]
pub const fn ip_base(hops: u8, new_addrs: u32) -> u16 {
    fold(0x4500 + ((hops as u32) << 8 | 17) + new_addrs)
}

/// The new IP header's checksum field: the flow's share and the fields the frame brings (type
/// of service, total length, identification, flags and fragment offset).
#[inline(always)]
pub const fn ip_check(base: u16, tos: u8, total: u16, id: u16, frag: u16) -> u16 {
    !fold(base as u32 + tos as u32 + total as u32 + id as u32 + frag as u32)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::{test_kit::Rng, turn::ChecksumUpdate};

    fn addr_sum(a: u32, b: u32) -> u32 {
        halves(a) + halves(b)
    }

    /// The update as the full path (turn::to_peer, turn::to_client) applies it, word by word:
    /// `removed` words, the old addresses by their sum, then `added` words and the new
    /// addresses.
    fn full_update(check: u16, removed: &[u16], addrs: u32, added: &[u16], new: [u32; 2]) -> u16 {
        let mut u = ChecksumUpdate::new(check);
        for w in removed {
            u.remove(*w);
        }
        u.remove_sum(addrs, 4);
        for w in added {
            u.add(*w);
        }
        for a in new {
            u.add((a >> 16) as u16);
            u.add(a as u16);
        }
        u.finish()
    }

    /// The shortcut's split of the update (a constant share summed when the slot is filled, the
    /// lengths per frame) gives the field the full path's word-by-word update gives, for
    /// either direction, zero checksums ("none") included.
    #[test]
    fn split_udp_updates_equal_the_full_paths_word_by_word_update() {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        for case in 0..20_000 {
            let (src, dst, new_src, new_dst) = (r.u32(), r.u32(), r.u32(), r.u32());
            let (sport, dport, new_sport, new_dport) = (r.u16(), r.u16(), r.u16(), r.u16());
            let channel = 0x4000 | (r.u16() & 0x3fff);
            let check = match case % 7 {
                0 => 0,
                1 => 0xffff,
                _ => r.u16(),
            };
            let clen = r.u16() % 1400;
            let ports = (sport as u32) << 16 | dport as u32;
            let new_ports = (new_sport as u32) << 16 | new_dport as u32;
            let (addrs, new_addrs) = (addr_sum(src, dst), addr_sum(new_src, new_dst));

            // ChannelData → UDP, as turn::to_peer updates it.
            let ulen = clen + 12;
            let full = full_update(
                check,
                &[channel, clen, ulen, ulen, sport, dport],
                addrs,
                &[clen + 8, clen + 8, new_sport, new_dport],
                [new_src, new_dst],
            );
            let delta = udp_delta(channel, 0, (ports, addrs), (new_ports, new_addrs));
            assert_eq!(to_peer_check(check, delta, clen, ulen), full, "case {case}");

            // UDP → ChannelData, as turn::to_client updates it.
            let ulen = clen + 8;
            let full = full_update(
                check,
                &[ulen, ulen, sport, dport],
                addrs,
                &[channel, clen, ulen + 4, ulen + 4, new_sport, new_dport],
                [new_src, new_dst],
            );
            let delta = udp_delta(0, channel, (ports, addrs), (new_ports, new_addrs));
            assert_eq!(to_client_check(check, delta, ulen), full, "case {case}");
        }
    }

    /// The IP header checksum from the flow's share and the frame's fields is the RFC 1071 sum
    /// over the whole 20-byte header, computed here byte pair by byte pair.
    #[test]
    fn ip_check_equals_the_sum_over_the_whole_header() {
        let mut r = Rng(0x2545_f491_4f6c_dd1d);
        for case in 0..20_000 {
            let (src, dst) = (r.u32(), r.u32());
            let (tos, total, id, frag, hops) =
                (r.u16() as u8, r.u16(), r.u16(), r.u16() & 0x4000, 64u8);
            let mut h = [0u8; 20];
            h[0] = 0x45;
            h[1] = tos;
            h[2..4].copy_from_slice(&total.to_be_bytes());
            h[4..6].copy_from_slice(&id.to_be_bytes());
            h[6..8].copy_from_slice(&frag.to_be_bytes());
            h[8] = hops;
            h[9] = 17;
            h[12..16].copy_from_slice(&src.to_be_bytes());
            h[16..20].copy_from_slice(&dst.to_be_bytes());
            let mut sum: u32 = h
                .chunks(2)
                .map(|w| u16::from_be_bytes([w[0], w[1]]) as u32)
                .sum();
            while sum >> 16 != 0 {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            let base = ip_base(hops, addr_sum(src, dst));
            assert_eq!(
                ip_check(base, tos, total, id, frag),
                !(sum as u16),
                "case {case}"
            );
        }
    }

    #[test]
    fn flows_differing_in_one_field_spread_over_the_slots() {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..8192u32 {
            let s = slot(
                u32::from_ne_bytes([198, 18, (i >> 8) as u8, i as u8]),
                u32::from_ne_bytes([198, 18, 0, 1]),
                (40000 + (i % 64)) << 16 | 3478,
                0x4000 + (i % 7) as u16,
                2,
            );
            assert!(s < TURN_FLOW_SLOTS);
            seen.insert(s);
        }
        assert!(seen.len() > 3500, "{} slots of 4096", seen.len());
    }
}
