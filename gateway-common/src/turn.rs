//! The TURN relay's XDP fast path: bound channels forwarded in the kernel. ChannelData from a
//! client becomes a plain UDP datagram from the allocation's address to the peer; a peer's
//! datagram to an allocation with a channel becomes ChannelData to the client. The relay's
//! userspace is the only writer of these maps (on ChannelBind, refresh and expiry); everything
//! else goes to userspace untouched. One pair of maps per address family: a binding's four
//! addresses are all IPv4 or all IPv6 (a client on IPv4 with an IPv6 relayed address, or the
//! reverse, stays in userspace, which translates between the families).

use crate::{assert_size, user_pod};

/// An address as the maps hold it: 4 (IPv4) or 16 (IPv6) bytes in network order.
pub trait TurnAddr: Copy + PartialEq + Eq {
    /// 16-bit words in the address (what a checksum covers).
    const WORDS: usize;
    /// The maps of this family's bindings (gateway_common::maps).
    const CHANNELS_MAP: &'static str;
    const PEERS_MAP: &'static str;
    /// Word `i` (< WORDS), big-endian.
    fn word(&self, i: usize) -> u16;
    /// The address's 32-bit words XORed together (the binding caches' slot hash).
    fn fold(&self) -> u32;
}

impl TurnAddr for [u8; 4] {
    const WORDS: usize = 2;
    const CHANNELS_MAP: &'static str = crate::maps::TURN_CHANNELS;
    const PEERS_MAP: &'static str = crate::maps::TURN_PEERS;
    #[inline(always)]
    fn word(&self, i: usize) -> u16 {
        let i = (i & 1) * 2;
        u16::from_be_bytes([self[i], self[i + 1]])
    }
    #[inline(always)]
    fn fold(&self) -> u32 {
        u32::from_ne_bytes(*self)
    }
}

impl TurnAddr for [u8; 16] {
    const WORDS: usize = 8;
    const CHANNELS_MAP: &'static str = crate::maps::TURN_CHANNELS6;
    const PEERS_MAP: &'static str = crate::maps::TURN_PEERS6;
    #[inline(always)]
    fn word(&self, i: usize) -> u16 {
        let i = (i & 7) * 2;
        u16::from_be_bytes([self[i], self[i + 1]])
    }
    #[inline(always)]
    fn fold(&self) -> u32 {
        crate::hash::fold_addr(self)
    }
}

/// A client's channel, as its ChannelData arrives: (client, listening address, channel).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ChannelKey<A = [u8; 4]> {
    pub client: A,
    pub listen: A,
    pub client_port: u16,
    pub listen_port: u16,
    pub channel: u16,
    pub _pad: u16,
}
assert_size!(ChannelKey, 16);
assert_size!(ChannelKey<[u8; 16]>, 40);

/// Where a channel's data goes: from the allocation's (relayed) address to the peer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ToPeer<A = [u8; 4]> {
    pub peer: A,
    pub relay: A,
    pub peer_port: u16,
    pub relay_port: u16,
    /// Counter slot of the binding (see [`counter_index`]).
    pub slot: u32,
}
assert_size!(ToPeer, 16);
assert_size!(ToPeer<[u8; 16]>, 40);

/// A peer's datagram to an allocation: (peer, allocation address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKey<A = [u8; 4]> {
    pub peer: A,
    pub relay: A,
    pub peer_port: u16,
    pub relay_port: u16,
}
assert_size!(PeerKey, 12);
assert_size!(PeerKey<[u8; 16]>, 36);

/// Where it goes: to the client, from the listening address, as ChannelData on `channel`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ToClient<A = [u8; 4]> {
    pub client: A,
    pub listen: A,
    pub client_port: u16,
    pub listen_port: u16,
    pub channel: u16,
    pub _pad: u16,
    pub slot: u32,
}
assert_size!(ToClient, 20);
assert_size!(ToClient<[u8; 16]>, 44);

user_pod!(
    ChannelKey,
    ToPeer,
    PeerKey,
    ToClient,
    ChannelKey<[u8; 16]>,
    ToPeer<[u8; 16]>,
    PeerKey<[u8; 16]>,
    ToClient<[u8; 16]>,
);

/// A binding as the kernel's per-CPU caches hold it: a copy of a map entry, tagged with the
/// bindings' generation it was read under ([`crate::maps::TURN_GENERATION`]) plus one, so that
/// a zeroed slot never matches. Userspace bumps the generation after every change to the
/// binding maps, so a copy read before a change never serves a packet after it. (The maps
/// stay the authority: a packet that misses the cache looks them up, as before the cache.)
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CachedBinding<K, V> {
    pub tag: u64,
    pub key: K,
    pub value: V,
}

/// Slots in each per-CPU binding cache (a power of two): direct-mapped, one binding a slot.
pub const BINDING_CACHE_SLOTS: u32 = 1024;

/// A channel key's slot in the channel caches.
#[inline(always)]
pub fn channel_cache_slot<A: TurnAddr>(k: &ChannelKey<A>) -> u32 {
    let ports = ((k.client_port as u32) << 16) | k.listen_port as u32;
    let h = k.client.fold() ^ k.listen.fold().rotate_left(16) ^ ports ^ k.channel as u32;
    crate::hash::mix32(h) & (BINDING_CACHE_SLOTS - 1)
}

/// A peer key's slot in the peer caches.
#[inline(always)]
pub fn peer_cache_slot<A: TurnAddr>(k: &PeerKey<A>) -> u32 {
    let ports = ((k.peer_port as u32) << 16) | k.relay_port as u32;
    let h = k.peer.fold() ^ k.relay.fold().rotate_left(16) ^ ports;
    crate::hash::mix32(h) & (BINDING_CACHE_SLOTS - 1)
}

/// Bindings whose traffic the kernel counts (per direction): quotas and statistics keep working
/// while the kernel forwards.
pub const BINDING_SLOTS: u32 = 65_536;
pub const DIRECTION_TO_PEER: u32 = 0;
pub const DIRECTION_TO_CLIENT: u32 = 1;

pub const fn counter_index(slot: u32, direction: u32) -> u32 {
    slot * 2 + direction
}

/// Why the program did what it did.
pub mod reason {
    pub const TO_PEER: u32 = 0;
    pub const TO_CLIENT: u32 = 1;
    /// Not ChannelData for a bound channel, nor a bound peer's datagram: userspace's.
    pub const PASS_OTHER: u32 = 2;
    /// ChannelData whose length field does not fit the datagram: userspace answers for it.
    pub const PASS_MALFORMED: u32 = 3;
    /// No route to the destination known to the kernel's FIB: userspace sends it.
    pub const PASS_NO_ROUTE: u32 = 4;
    /// The frame could not be resized after its rewrite began (a driver without headroom).
    pub const DROP_REWRITE: u32 = 5;
    /// A UDP checksum only begun (a sender on this host leaving it to offload, as over a
    /// veth): the skb's checksum state points at the old header, so only userspace can relay it.
    /// Frames from a wire always carry full checksums.
    pub const PASS_PARTIAL_CHECKSUM: u32 = 6;
    /// The relay's userspace has not said it is alive within [`super::ALIVE_WINDOW_NS`]: its
    /// bindings are not trusted any more (quotas and expiry are its work), so nothing is
    /// relayed in the kernel; the kernel's own stack gets the frame.
    pub const PASS_RELAY_GONE: u32 = 7;
    pub const SLOTS: u32 = 8;
}

/// How long the fast path trusts its bindings after the relay's last sign of life (it stamps
/// CLOCK_MONOTONIC_COARSE, in ns, every second).
pub const ALIVE_WINDOW_NS: u64 = 5_000_000_000;

pub const REASON_NAMES: [&str; reason::SLOTS as usize] = [
    "to_peer",
    "to_client",
    "other",
    "malformed",
    "no_route",
    "rewrite_failed",
    "partial_checksum",
    "relay_gone",
];

/// Whether a UDP checksum field holds only the pseudo-header sum (not complemented): what a
/// local sender leaves for checksum offload. `addrs` is the sum of the source and destination
/// addresses' 16-bit words. A full checksum equals it once in 65,536 frames; those go to
/// userspace too, which is correct either way.
#[inline(always)]
pub fn begun_checksum(check: u16, addrs: u32, ulen: u16) -> bool {
    check != 0 && check == crate::checksum::fold(17 + ulen as u32 + addrs)
}

/// A UDP checksum updated word by word (RFC 1624, equation 3, term by term; a word removed
/// outright counts as replaced by zero). A zero checksum ("none", IPv4) stays zero.
#[derive(Clone, Copy)]
pub struct ChecksumUpdate {
    before: u16,
    sum: u32,
}

impl ChecksumUpdate {
    #[inline(always)]
    pub fn new(check: u16) -> Self {
        ChecksumUpdate {
            before: check,
            sum: (!check) as u32,
        }
    }

    #[inline(always)]
    pub fn remove(&mut self, word: u16) {
        self.sum += (!word) as u32;
    }

    #[inline(always)]
    pub fn add(&mut self, word: u16) {
        self.sum += word as u32;
    }

    /// Removes `count` words known only by their sum (`sum` ≤ count × 0xffff): each word
    /// removed adds its complement, 0xffff − word.
    #[inline(always)]
    pub fn remove_sum(&mut self, sum: u32, count: u32) {
        self.sum += count * 0xffff - sum;
    }

    #[inline(always)]
    pub fn add_addr<A: TurnAddr>(&mut self, a: &A) {
        let mut i = 0;
        while i < A::WORDS {
            self.add(a.word(i));
            i += 1;
        }
    }

    /// The new checksum field. (At most a few dozen words go through one update, far from
    /// what would overflow the 32-bit sum.)
    #[inline(always)]
    pub fn finish(self) -> u16 {
        crate::checksum::udp_field(self.before, !crate::checksum::fold(self.sum))
    }
}

/// The word a trailing byte contributes to the checksum, for a byte at `offset` from the UDP
/// header (an even offset puts it in a word's high half).
#[inline(always)]
pub fn trailing_word(offset: usize, byte: u8) -> u16 {
    if offset.is_multiple_of(2) {
        (byte as u16) << 8
    } else {
        byte as u16
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{vec, vec::Vec};

    use super::*;

    /// Keys that differ in any one field land in slots spread over the cache: 4,096 channels of
    /// one client (ports and channel numbers varied) fill most of its 1,024 slots, for either
    /// family and direction, and every slot is in range.
    #[test]
    fn binding_cache_slots_spread_keys_over_the_cache() {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..4096u32 {
            let k = ChannelKey {
                client: [198, 18, 0, 1],
                listen: [198, 18, 0, 254],
                client_port: 40000 + (i % 64) as u16,
                listen_port: 3478,
                channel: 0x4000 + (i / 64) as u16,
                _pad: 0,
            };
            let s = channel_cache_slot(&k);
            assert!(s < BINDING_CACHE_SLOTS);
            seen.insert(s);
        }
        assert!(seen.len() > 900, "{} slots of 1024", seen.len());
        seen.clear();
        for i in 0..4096u32 {
            let mut peer = [0u8; 16];
            peer[0] = 0xfd;
            peer[15] = (i & 0xff) as u8;
            peer[14] = (i >> 8) as u8;
            let k = PeerKey {
                peer,
                relay: [0xfd; 16],
                peer_port: 5000,
                relay_port: 50001,
            };
            let s = peer_cache_slot(&k);
            assert!(s < BINDING_CACHE_SLOTS);
            seen.insert(s);
        }
        assert!(seen.len() > 900, "{} slots of 1024", seen.len());
    }

    /// The update as the kernel program applies it, word by word.
    fn update(check: u16, removed: &[u16], added: &[u16]) -> u16 {
        let mut u = ChecksumUpdate::new(check);
        for w in removed {
            u.remove(*w);
        }
        for w in added {
            u.add(*w);
        }
        u.finish()
    }

    /// The 16-bit words of an IPv4 address.
    const fn addr_words(a: [u8; 4]) -> [u16; 2] {
        [
            u16::from_be_bytes([a[0], a[1]]),
            u16::from_be_bytes([a[2], a[3]]),
        ]
    }

    /// The UDP checksum computed in full, the way a receiver checks it (independent of the
    /// update above).
    fn full(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> u16 {
        let len = (8 + payload.len()) as u32;
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&src);
        bytes.extend_from_slice(&dst);
        bytes.extend_from_slice(&[0, 17]);
        bytes.extend_from_slice(&(len as u16).to_be_bytes());
        bytes.extend_from_slice(&sport.to_be_bytes());
        bytes.extend_from_slice(&dport.to_be_bytes());
        bytes.extend_from_slice(&(len as u16).to_be_bytes());
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(payload);
        if bytes.len() % 2 == 1 {
            bytes.push(0);
        }
        let mut sum: u32 = bytes
            .chunks(2)
            .map(|w| u16::from_be_bytes([w[0], w[1]]) as u32)
            .sum();
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let c = !(sum as u16);
        if c == 0 { 0xffff } else { c }
    }

    const CLIENT: [u8; 4] = [198, 18, 30, 2];
    const LISTEN: [u8; 4] = [198, 18, 30, 1];
    const RELAY: [u8; 4] = [198, 18, 31, 1];
    const PEER: [u8; 4] = [198, 18, 31, 2];

    #[test]
    fn channel_data_to_udp_and_back_keeps_checksums_right() {
        for (len, pad) in [
            (0usize, 0usize),
            (1, 3),
            (5, 3),
            (64, 0),
            (1199, 1),
            (1200, 0),
            (3, 1),
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let channel = 0x4001u16;
            // ChannelData as the client sent it (padding bytes not necessarily zero).
            let mut cd = channel.to_be_bytes().to_vec();
            cd.extend_from_slice(&(len as u16).to_be_bytes());
            cd.extend_from_slice(&data);
            cd.extend((0..pad).map(|i| 0xa0 + i as u8));
            let old = full(CLIENT, LISTEN, 40000, 3478, &cd);
            let (old_len, new_len) = ((8 + cd.len()) as u16, (8 + len) as u16);
            // Client → peer: strip the header and padding, new addresses, ports and lengths.
            let mut removed = vec![channel, len as u16, old_len, old_len, 40000, 3478];
            removed.extend(addr_words(CLIENT));
            removed.extend(addr_words(LISTEN));
            removed.extend(
                cd[4 + len..]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| trailing_word(12 + len + i, *b)),
            );
            let mut added = vec![new_len, new_len, 50001, 5000];
            added.extend(addr_words(RELAY));
            added.extend(addr_words(PEER));
            let got = update(old, &removed, &added);
            assert_eq!(
                got,
                full(RELAY, PEER, 50001, 5000, &data),
                "len {len} pad {pad}"
            );

            // Peer → client: the reverse, without padding.
            let back = full(PEER, RELAY, 5000, 50001, &data);
            let mut removed = vec![new_len, new_len, 5000, 50001];
            removed.extend(addr_words(PEER));
            removed.extend(addr_words(RELAY));
            let wrapped_len = (8 + 4 + len) as u16;
            let mut added = vec![channel, len as u16, wrapped_len, wrapped_len, 3478, 40000];
            added.extend(addr_words(LISTEN));
            added.extend(addr_words(CLIENT));
            let mut unpadded = channel.to_be_bytes().to_vec();
            unpadded.extend_from_slice(&(len as u16).to_be_bytes());
            unpadded.extend_from_slice(&data);
            assert_eq!(
                update(back, &removed, &added),
                full(LISTEN, CLIENT, 3478, 40000, &unpadded),
                "back, len {len}"
            );
        }
        assert_eq!(update(0, &[1, 2], &[3]), 0, "no checksum stays none");
    }

    /// The UDP checksum over IPv6 computed in full (RFC 8200 section 8.1's pseudo-header:
    /// addresses, 32-bit length, three zero bytes, next header).
    fn full6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, payload: &[u8]) -> u16 {
        let len = (8 + payload.len()) as u32;
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&src);
        bytes.extend_from_slice(&dst);
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(&[0, 0, 0, 17]);
        bytes.extend_from_slice(&sport.to_be_bytes());
        bytes.extend_from_slice(&dport.to_be_bytes());
        bytes.extend_from_slice(&(len as u16).to_be_bytes());
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(payload);
        if bytes.len() % 2 == 1 {
            bytes.push(0);
        }
        let mut sum: u32 = bytes
            .chunks(2)
            .map(|w| u16::from_be_bytes([w[0], w[1]]) as u32)
            .sum();
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let c = !(sum as u16);
        if c == 0 { 0xffff } else { c }
    }

    fn v6(last: u16) -> [u8; 16] {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[0xfd, 0x00, 0x00, 0x31]);
        a[8..10].copy_from_slice(&[0xab, 0xcd]);
        a[14..].copy_from_slice(&last.to_be_bytes());
        a
    }

    /// The same rewrites over IPv6, through the word-by-word update the IPv6 path uses.
    #[test]
    fn ipv6_channel_data_to_udp_and_back_keeps_checksums_right() {
        let (client, listen, relay, peer) = (v6(0xc2), v6(0xc1), v6(0xf001), v6(0xffff));
        for (len, pad) in [(0usize, 0usize), (1, 3), (64, 0), (1199, 1), (1200, 0)] {
            let data: Vec<u8> = (0..len).map(|i| (i * 29 + 3) as u8).collect();
            let channel = 0x7ffeu16;
            let mut cd = channel.to_be_bytes().to_vec();
            cd.extend_from_slice(&(len as u16).to_be_bytes());
            cd.extend_from_slice(&data);
            cd.extend((0..pad).map(|i| 0x51 + i as u8));
            let (old_len, new_len) = ((8 + cd.len()) as u16, (8 + len) as u16);
            let mut u = ChecksumUpdate::new(full6(client, listen, 40000, 3478, &cd));
            for w in [channel, len as u16, old_len, old_len, 40000, 3478] {
                u.remove(w);
            }
            let mut by_sum = u;
            let words: Vec<u16> = client
                .chunks(2)
                .chain(listen.chunks(2))
                .map(|w| u16::from_be_bytes([w[0], w[1]]))
                .collect();
            for w in &words {
                u.remove(*w);
            }
            by_sum.remove_sum(words.iter().map(|w| *w as u32).sum(), 16);
            assert_eq!(by_sum.finish(), u.finish(), "removed by sum, len {len}");
            for (i, b) in cd[4 + len..].iter().enumerate() {
                u.remove(trailing_word(12 + len + i, *b));
            }
            for w in [new_len, new_len, 50001, 5000] {
                u.add(w);
            }
            u.add_addr(&relay);
            u.add_addr(&peer);
            assert_eq!(
                u.finish(),
                full6(relay, peer, 50001, 5000, &data),
                "len {len} pad {pad}"
            );

            let mut u = ChecksumUpdate::new(full6(peer, relay, 5000, 50001, &data));
            for w in [new_len, new_len, 5000, 50001] {
                u.remove(w);
            }
            for w in peer.chunks(2).chain(relay.chunks(2)) {
                u.remove(u16::from_be_bytes([w[0], w[1]]));
            }
            let wrapped_len = (8 + 4 + len) as u16;
            for w in [channel, len as u16, wrapped_len, wrapped_len, 3478, 40000] {
                u.add(w);
            }
            u.add_addr(&listen);
            u.add_addr(&client);
            let mut unpadded = channel.to_be_bytes().to_vec();
            unpadded.extend_from_slice(&(len as u16).to_be_bytes());
            unpadded.extend_from_slice(&data);
            assert_eq!(
                u.finish(),
                full6(listen, client, 3478, 40000, &unpadded),
                "back, len {len}"
            );
        }
        // A begun checksum (the pseudo-header sum) is recognised over IPv6 too.
        let ulen = 8 + 20u16;
        let mut sum = 17 + ulen as u32;
        for a in [client, listen] {
            for w in a.chunks(2) {
                sum += u16::from_be_bytes([w[0], w[1]]) as u32;
            }
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let addrs: u32 = client
            .chunks(2)
            .chain(listen.chunks(2))
            .map(|w| u16::from_be_bytes([w[0], w[1]]) as u32)
            .sum();
        assert!(begun_checksum(sum as u16, addrs, ulen));
        assert!(!begun_checksum(!(sum as u16), addrs, ulen));
    }
}
