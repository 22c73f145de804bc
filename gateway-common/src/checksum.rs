//! Internet checksum arithmetic: one's-complement sums (RFC 1071) and incremental updates of a
//! checksum field when covered bytes change (RFC 1624), written once for the kernel programs'
//! rewrites (TTL today; addresses, ports, MSS for translation) and tested on the host against
//! full recomputation.

/// Folds a 32-bit one's-complement accumulator to 16 bits.
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum field after one covered 16-bit word changed from `old` to `new`:
/// HC' = ~(~HC + ~m + m') (RFC 1624, equation 3), which never yields the -0 of equation 2.
#[inline(always)]
pub const fn update16(check: u16, old: u16, new: u16) -> u16 {
    !fold((!check) as u32 + (!old) as u32 + new as u32)
}

/// As [`update16`] for a covered 32-bit value (an IPv4 address, two ports).
#[inline(always)]
pub const fn update32(check: u16, old: u32, new: u32) -> u16 {
    let sum = (!check) as u32
        + (!(old >> 16) as u16) as u32
        + (!(old as u16)) as u32
        + (new >> 16)
        + (new & 0xffff);
    !fold(sum)
}

/// As [`update16`] for a covered 16-byte value (an IPv6 address).
#[inline(always)]
pub fn update128(check: u16, old: &[u8; 16], new: &[u8; 16]) -> u16 {
    let mut sum = (!check) as u32;
    let mut i = 0;
    while i < 16 {
        sum += (!u16::from_be_bytes([old[i], old[i + 1]])) as u32
            + u16::from_be_bytes([new[i], new[i + 1]]) as u32;
        i += 2;
    }
    !fold(sum)
}

/// A TCP/UDP checksum field that holds only the pseudo-header sum, not complemented (a local
/// sender's CHECKSUM_PARTIAL: the rest is summed at transmit), after a covered 32-bit
/// pseudo-header value changed: P' = P + ~m + m'. Changes outside the pseudo-header (ports)
/// leave such a field alone.
#[inline(always)]
pub const fn update_partial32(field: u16, old: u32, new: u32) -> u16 {
    !update32(!field, old, new)
}

/// As [`update_partial32`] for an IPv6 address.
#[inline(always)]
pub fn update_partial128(field: u16, old: &[u8; 16], new: &[u8; 16]) -> u16 {
    !update128(!field, old, new)
}

/// UDP over IPv4: a zero checksum means "none computed" and stays zero; a computed zero goes on
/// the wire as 0xffff (RFC 768).
#[inline(always)]
pub const fn udp_field(check_before: u16, updated: u16) -> u16 {
    if check_before == 0 {
        0
    } else if updated == 0 {
        0xffff
    } else {
        updated
    }
}

/// The transport checksum of a packet an ICMP error quotes, after the NAT changed one of its
/// addresses (IPv4: the first 4 bytes) and the port beside it (RFC 5508 asks for the quoted
/// packet to be translated whole; Linux's NAT updates this field too). `udp`: a zero (no
/// checksum) stays zero and a computed zero is written 0xffff.
#[inline(always)]
pub fn quoted_transport_check(
    check: u16,
    udp: bool,
    v4: bool,
    old: &[u8; 16],
    new: &[u8; 16],
    old_port: u16,
    new_port: u16,
) -> u16 {
    if udp && check == 0 {
        return 0;
    }
    let c = if v4 {
        let w = |a: &[u8; 16]| u32::from_be_bytes([a[0], a[1], a[2], a[3]]);
        update32(check, w(old), w(new))
    } else {
        update128(check, old, new)
    };
    let c = update16(c, old_port, new_port);
    if udp { udp_field(check, c) } else { c }
}

/// The pseudo-header's one's-complement sum, not folded: source and destination (the first 4
/// bytes of each for IPv4), protocol and the upper-layer length.
#[inline(always)]
pub fn pseudo_header_sum(v4: bool, src: &[u8; 16], dst: &[u8; 16], proto: u8, len: u32) -> u32 {
    let words = if v4 { 2 } else { 8 };
    let mut sum = proto as u32 + (len >> 16) + (len & 0xffff);
    let mut i = 0;
    while i < 8 {
        if i < words {
            sum += u16::from_be_bytes([src[2 * i], src[2 * i + 1]]) as u32
                + u16::from_be_bytes([dst[2 * i], dst[2 * i + 1]]) as u32;
        }
        i += 1;
    }
    sum
}

/// The folded IPv4 pseudo-header sum of a TCP/UDP datagram `l4_len` bytes long, from the
/// addresses as native words of their header bytes; returned the same way (its native bytes
/// are the sum's bytes on the wire). The one's-complement sum does not depend on byte order
/// (RFC 1071), so this takes word loads where the byte-wise sum takes sixteen byte loads.
#[inline(always)]
pub fn v4_pseudo_header_fold_ne(src: u32, dst: u32, proto: u8, l4_len: u16) -> u16 {
    let mut sum = (src & 0xffff)
        + (src >> 16)
        + (dst & 0xffff)
        + (dst >> 16)
        + u16::from_ne_bytes([0, proto]) as u32
        + u16::from_ne_bytes(l4_len.to_be_bytes()) as u32;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

#[cfg(test)]
mod tests {
    use crate::test_kit::{Rng, internet_checksum};
    extern crate std;
    use std::vec::Vec;

    use super::*;

    /// Full recomputation, the plain way (RFC 1071), independent of the code under test.
    fn full(chunks: &[&[u8]]) -> u16 {
        internet_checksum(&chunks.concat())
    }

    fn segment_checksum(v4: bool, src: &[u8; 16], dst: &[u8; 16], proto: u8, seg: &[u8]) -> u16 {
        let (s, d) = if v4 {
            (&src[..4], &dst[..4])
        } else {
            (&src[..], &dst[..])
        };
        let len = (seg.len() as u32).to_be_bytes();
        full(&[
            s,
            d,
            &[0, proto],
            if v4 { &len[2..] } else { &len[..] },
            seg,
        ])
    }

    #[test]
    fn rewrites_match_full_recomputation() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..20_000 {
            let v4 = round % 2 == 0;
            let mut src: [u8; 16] = rng.bytes();
            let mut dst: [u8; 16] = rng.bytes();
            if v4 {
                src[4..].fill(0);
                dst[4..].fill(0);
            }
            let proto = if round % 3 == 0 { 17 } else { 6 };
            let len = 8 + (rng.next() % 200) as usize;
            let mut seg: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let field = if proto == 17 { 6 } else { 16.min(len - 2) & !1 };
            seg[field] = 0;
            seg[field + 1] = 0;
            let check = segment_checksum(v4, &src, &dst, proto, &seg);
            seg[field..field + 2].copy_from_slice(&check.to_be_bytes());
            // The pseudo-header helper agrees with the plain sum.
            let mut zeroed = seg.clone();
            zeroed[field] = 0;
            zeroed[field + 1] = 0;
            let seg_sum = full(&[&zeroed]);
            assert_eq!(
                !fold(pseudo_header_sum(v4, &src, &dst, proto, len as u32) + (!seg_sum) as u32),
                check,
                "pseudo-header, round {round}"
            );

            // Rewrite the source address.
            let new_src: [u8; 16] = if v4 {
                let mut a = [0u8; 16];
                a[..4].copy_from_slice(&rng.bytes::<4>());
                a
            } else {
                rng.bytes()
            };
            let updated = if v4 {
                update32(
                    check,
                    u32::from_be_bytes(src[..4].try_into().unwrap()),
                    u32::from_be_bytes(new_src[..4].try_into().unwrap()),
                )
            } else {
                update128(check, &src, &new_src)
            };
            src = new_src;
            let want = segment_checksum(v4, &src, &dst, proto, &zeroed);
            assert!(
                fold_equal(updated, want),
                "address rewrite, round {round}: {updated:#06x} vs {want:#06x}"
            );
            seg[field..field + 2].copy_from_slice(&updated.to_be_bytes());

            // Rewrite the first 16-bit word of the segment (a port), if it is not the field.
            if field != 0 {
                let old = u16::from_be_bytes([seg[0], seg[1]]);
                let new = rng.next() as u16;
                let updated2 = update16(updated, old, new);
                seg[0..2].copy_from_slice(&new.to_be_bytes());
                zeroed[0..2].copy_from_slice(&new.to_be_bytes());
                let want = segment_checksum(v4, &src, &dst, proto, &zeroed);
                assert!(
                    fold_equal(updated2, want),
                    "port rewrite, round {round}: {updated2:#06x} vs {want:#06x}"
                );
            }
        }
    }

    /// 0x0000 and 0xffff are the same one's-complement value; a receiver accepts either.
    fn fold_equal(a: u16, b: u16) -> bool {
        a == b || (a == 0 && b == 0xffff) || (a == 0xffff && b == 0)
    }

    #[test]
    fn ipv4_ttl_decrement_as_the_kernel_does() {
        let mut rng = Rng(7);
        for _ in 0..10_000 {
            let mut h: [u8; 20] = rng.bytes();
            h[0] = 0x45;
            h[8] = 2 + (rng.next() % 250) as u8;
            h[10] = 0;
            h[11] = 0;
            let check = full(&[&h]);
            h[10..12].copy_from_slice(&check.to_be_bytes());
            let old = u16::from_be_bytes([h[8], h[9]]);
            h[8] -= 1;
            let updated = update16(check, old, u16::from_be_bytes([h[8], h[9]]));
            h[10..12].copy_from_slice(&updated.to_be_bytes());
            // A header with a right checksum sums to 0xffff (its complement to zero).
            assert_eq!(full(&[&h]), 0, "{h:?}");
        }
    }

    #[test]
    fn a_quoted_datagrams_checksum_follows_its_translation() {
        let mut rng = Rng(0x51ed);
        for round in 0..10_000 {
            let (v4, udp) = (round % 2 == 0, round % 3 != 0);
            let host = |rng: &mut Rng| -> [u8; 16] {
                let mut a: [u8; 16] = rng.bytes();
                if v4 {
                    a[4..].fill(0);
                }
                a
            };
            let (src, dst, new_dst) = (host(&mut rng), host(&mut rng), host(&mut rng));
            let proto = if udp { 17 } else { 6 };
            let len = 20 + (rng.next() % 100) as usize;
            let field = if udp { 6 } else { 16 };
            let mut seg: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            seg[field..field + 2].fill(0);
            let check = segment_checksum(v4, &src, &dst, proto, &seg);
            // The reply to a translated flow, quoted: its destination (the NAT's address and
            // port) goes back to the peer's.
            let (old_port, new_port) = (u16::from_be_bytes([seg[2], seg[3]]), rng.next() as u16);
            let updated =
                quoted_transport_check(check, udp, v4, &dst, &new_dst, old_port, new_port);
            seg[2..4].copy_from_slice(&new_port.to_be_bytes());
            let want = segment_checksum(v4, &src, &new_dst, proto, &seg);
            assert!(
                fold_equal(updated, want),
                "round {round}: {updated:#06x} vs {want:#06x}"
            );
            assert!(!udp || updated != 0, "UDP never writes a computed zero");
        }
        // No UDP checksum stays none.
        assert_eq!(
            quoted_transport_check(0, true, true, &[1; 16], &[2; 16], 1, 2),
            0
        );
    }

    #[test]
    fn udp_zero_checksum_stays_zero_and_a_computed_zero_is_sent_as_ffff() {
        assert_eq!(udp_field(0, 0x1234), 0);
        assert_eq!(udp_field(0xabcd, 0), 0xffff);
        assert_eq!(udp_field(0xabcd, 0x1234), 0x1234);
    }

    #[test]
    fn partial_fields_follow_the_pseudo_header() {
        let v4 = |a: [u8; 4]| {
            let mut x = [0u8; 16];
            x[..4].copy_from_slice(&a);
            x
        };
        let (src, dst, new) = (
            v4([100, 64, 10, 1]),
            v4([198, 18, 10, 10]),
            v4([198, 18, 10, 1]),
        );
        let before = fold(pseudo_header_sum(true, &src, &dst, 6, 40));
        let after = fold(pseudo_header_sum(true, &new, &dst, 6, 40));
        let w = |a: &[u8; 16]| u32::from_be_bytes([a[0], a[1], a[2], a[3]]);
        assert_eq!(update_partial32(before, w(&src), w(&new)), after);
        let s6: [u8; 16] = [0xfd, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let n6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34];
        let before = fold(pseudo_header_sum(false, &s6, &dst, 17, 1000));
        let after = fold(pseudo_header_sum(false, &n6, &dst, 17, 1000));
        assert_eq!(update_partial128(before, &s6, &n6), after);
    }

    fn v4_addr(a: [u8; 4]) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&a);
        b
    }

    #[test]
    fn word_pseudo_header_sum_matches_the_byte_wise_one() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (s, d) = ((x as u32).to_be_bytes(), ((x >> 32) as u32).to_be_bytes());
            let len = (x >> 17) as u16;
            for proto in [6u8, 17] {
                let want = fold(pseudo_header_sum(
                    true,
                    &v4_addr(s),
                    &v4_addr(d),
                    proto,
                    len as u32,
                ));
                let got = v4_pseudo_header_fold_ne(
                    u32::from_ne_bytes(s),
                    u32::from_ne_bytes(d),
                    proto,
                    len,
                );
                assert_eq!(got.to_ne_bytes(), want.to_be_bytes(), "{s:?} {d:?} {len}");
            }
        }
        // The carries fold twice: all-ones words.
        let all = u32::from_ne_bytes([0xff; 4]);
        let want = fold(pseudo_header_sum(
            true,
            &v4_addr([0xff; 4]),
            &v4_addr([0xff; 4]),
            17,
            0xffff,
        ));
        assert_eq!(
            v4_pseudo_header_fold_ne(all, all, 17, 0xffff).to_ne_bytes(),
            want.to_be_bytes()
        );
    }
}
