//! TCP MSS clamping: the largest segment a peer may announce across a tunnel, and the walk over
//! a SYN's options that finds the MSS option. Pure, so the kernel and host tests run the same
//! code; the kernel loads the options into a fixed buffer and calls [`find_mss`].

use crate::{assert_size, user_pod};

/// TCP options take at most 40 bytes (data offset 15 words, minus the 20-byte header).
pub const MAX_TCP_OPTIONS: usize = 40;
const OPT_END: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;
const OPT_MSS_LEN: usize = 4;

/// The MSS a tunnel interface allows (0: not clamped), by IP version: the interface MTU minus
/// the IP and TCP headers (20 + 20 for IPv4, 40 + 20 for IPv6), as NetBird clamps on wt0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MssClamp {
    pub v4: u16,
    pub v6: u16,
}
assert_size!(MssClamp, 4);
user_pod!(MssClamp);

impl MssClamp {
    /// The clamp for a tunnel of this MTU (1240 / 1220 at NetBird's 1280).
    pub const fn for_mtu(mtu: u32) -> MssClamp {
        let v4 = mtu.saturating_sub(40);
        let v6 = mtu.saturating_sub(60);
        MssClamp {
            v4: if v4 > 0xffff { 0xffff } else { v4 as u16 },
            v6: if v6 > 0xffff { 0xffff } else { v6 as u16 },
        }
    }

    /// One value for both versions (IPv6's headers are 20 bytes longer).
    pub const fn fixed_v4(mss: u16) -> MssClamp {
        MssClamp {
            v4: mss,
            v6: mss.saturating_sub(20),
        }
    }
}

/// Finds the MSS option in the first `len` bytes of a TCP options area: its offset there and
/// its value. `None` when there is none, or when the options are malformed before it (a length
/// below 2, or running past the end): then nothing is rewritten. Each step moves forward by at
/// least one byte, so the walk ends within [`MAX_TCP_OPTIONS`] steps.
#[inline(always)]
pub fn find_mss(opts: &[u8; MAX_TCP_OPTIONS], len: usize) -> Option<(usize, u16)> {
    let len = if len > MAX_TCP_OPTIONS {
        MAX_TCP_OPTIONS
    } else {
        len
    };
    let mut i = 0;
    while i < MAX_TCP_OPTIONS {
        if i >= len {
            return None;
        }
        let kind = *opts.get(i)?;
        if kind == OPT_END {
            return None;
        }
        if kind == OPT_NOP {
            i += 1;
            continue;
        }
        let opt_len = *opts.get(i + 1)? as usize;
        if opt_len < 2 || i + opt_len > len {
            return None;
        }
        if kind == OPT_MSS {
            if opt_len != OPT_MSS_LEN {
                return None;
            }
            return Some((
                i,
                u16::from_be_bytes([*opts.get(i + 2)?, *opts.get(i + 3)?]),
            ));
        }
        i += opt_len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(bytes: &[u8]) -> ([u8; MAX_TCP_OPTIONS], usize) {
        let mut a = [0u8; MAX_TCP_OPTIONS];
        a[..bytes.len()].copy_from_slice(bytes);
        (a, bytes.len())
    }

    const MSS_1460: [u8; 4] = [2, 4, 0x05, 0xb4];
    const SACK_OK: [u8; 2] = [4, 2];
    const TIMESTAMPS: [u8; 10] = [8, 10, 0, 0, 0, 1, 0, 0, 0, 0];
    const WSCALE: [u8; 3] = [3, 3, 7];

    #[test]
    fn finds_the_mss_wherever_it_sits() {
        // Linux's SYN: MSS, SACK permitted, timestamps, NOP, window scale.
        let linux = [&MSS_1460[..], &SACK_OK, &TIMESTAMPS, &[1], &WSCALE].concat();
        let (a, n) = opts(&linux);
        assert_eq!(find_mss(&a, n), Some((0, 1460)));
        // After NOPs, after every other option, and as the very last bytes of a full area.
        let late = [&[1, 1][..], &SACK_OK, &TIMESTAMPS, &[1], &WSCALE, &MSS_1460].concat();
        let (a, n) = opts(&late);
        assert_eq!(find_mss(&a, n), Some((18, 1460)));
        let mut full = [1u8; 36].to_vec();
        full.extend_from_slice(&MSS_1460);
        let (a, n) = opts(&full);
        assert_eq!(find_mss(&a, n), Some((36, 1460)));
    }

    #[test]
    fn absent_or_malformed_options_find_nothing() {
        let cases: [&[u8]; 8] = [
            &[],
            &[1, 1, 1, 1],
            // End of options before the MSS.
            &[0, 0, 2, 4, 5, 0xb4],
            // A zero or one length would never advance.
            &[8, 0, 2, 4, 5, 0xb4],
            &[8, 1, 2, 4, 5, 0xb4],
            // An option running past the area.
            &[8, 10, 0, 0],
            // An MSS cut short, or of the wrong length.
            &[1, 1, 2, 4, 5],
            &[2, 3, 5, 0xb4],
        ];
        for c in cases {
            let (a, n) = opts(c);
            assert_eq!(find_mss(&a, n), None, "{c:?}");
        }
        // Bytes past `len` are not options.
        let (a, _) = opts(&MSS_1460);
        assert_eq!(find_mss(&a, 2), None);
    }

    #[test]
    fn clamps_follow_netbirds_arithmetic() {
        assert_eq!(MssClamp::for_mtu(1280), MssClamp { v4: 1240, v6: 1220 });
        assert_eq!(MssClamp::for_mtu(1420), MssClamp { v4: 1380, v6: 1360 });
        assert_eq!(MssClamp::fixed_v4(1200), MssClamp { v4: 1200, v6: 1180 });
        assert_eq!(MssClamp::for_mtu(30), MssClamp { v4: 0, v6: 0 });
    }
}
