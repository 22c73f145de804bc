//! The masquerade's translation tables as the kernel and the controller share them: arrays of
//! buckets of [`NAT_WAYS`] translations each, outside the kernel's hash maps.
//!
//! Why not LRU hash maps: recording a new flow there (a lookup, then an insert into each
//! direction's map, each insert evicting from a full table under the LRU's locks) cost more
//! than the TC path's whole forwarding of the packet; bench/RESULTS.md measures it.
//!
//! - A translation's forward entry lives in the bucket its original tuple hashes to, its
//!   reverse entry in the bucket its translated tuple hashes to (each table its own array).
//! - Writers (the kernel's programs and the controller's sweep) take a bucket with one
//!   compare-and-swap on its sequence word (odd: taken), write, and release it by adding one.
//!   They never wait: a bucket that is taken is a failed attempt (another port, or a counted
//!   drop), so no program spins.
//! - Readers take no lock: they read the sequence word before and after the ways they read,
//!   and trust what they read only when it was even and did not change.
//! - A bucket without a free way gives up its oldest translation that never saw a reply (as
//!   the kernel's conntrack drops an unassured entry early when full), together with that
//!   translation's entry in the other table, so that no port is ever held by two flows. A
//!   translation that was replied to is never evicted: its bucket full of those is a counted
//!   drop of the new flow.
//! - The hash is keyed by a random seed kept in the pinned [`NatTableShape`], so that a peer
//!   cannot choose tuples that fill one bucket, and the tables keep their meaning across a
//!   restart of the controller.

use crate::{
    assert_size,
    nat::{NatKey, NatTarget},
    user_pod,
};

/// Translations per bucket.
pub const NAT_WAYS: usize = 4;

/// One translation as one table holds it. An empty way has protocol 0 (no flow has).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatWay {
    pub key: NatKey,
    pub target: NatTarget,
}
assert_size!(NatWay, 72);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatBucket {
    /// Even: free; odd: a writer holds the bucket. Bumped by one at each take and release, so
    /// a reader that saw the same even value before and after its reads saw no write.
    pub seq: u64,
    pub ways: [NatWay; NAT_WAYS],
}
assert_size!(NatBucket, 8 + 72 * NAT_WAYS);

/// The tables' shape: how many buckets each has (a power of two) and the hash's seed.
/// Pinned with the tables: written once when they are created, read by every program run.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatTableShape {
    pub buckets: u32,
    pub seed: u32,
}
assert_size!(NatTableShape, 8);

user_pod!(NatWay, NatBucket, NatTableShape);

/// Buckets for `entries` translations: a power of two, at least one.
pub const fn buckets_for(entries: u32) -> u32 {
    let b = entries.div_ceil(NAT_WAYS as u32);
    if b <= 1 { 1 } else { b.next_power_of_two() }
}

/// The bucket `key` lives in (`shape.buckets` is a power of two). The key is read as its ten
/// 32-bit words in memory order (the kernel and the controller share the layout and the byte
/// order), so that no copy of it lands on the kernel programs' small stack.
#[inline(always)]
pub fn bucket_of(key: &NatKey, shape: &NatTableShape) -> u32 {
    const WORDS: usize = size_of::<NatKey>() / 4;
    let words = key as *const NatKey as *const u32;
    // Every word into a multiply-rotate mix, then murmur3's finaliser.
    let mut h = shape.seed ^ 0x9e37_79b9;
    let mut i = 0;
    while i < WORDS {
        // SAFETY: `NatKey` is 40 bytes, 8-aligned, without padding (its `_pad` is a field).
        let w = unsafe { *words.add(i) };
        h = (h ^ w).wrapping_mul(0xcc9e_2d51);
        h = h.rotate_left(15).wrapping_mul(0x1b87_3593);
        i += 1;
    }
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h & shape.buckets.wrapping_sub(1)
}

/// The key of a translation's entry in the other table, from one entry (`key` → `target`):
/// the forward entry's gives the reverse key and the reverse entry's the forward key. An echo
/// flow's identifier is both of its ports.
#[inline(always)]
pub fn counterpart(key: &NatKey, target: &NatTarget) -> NatKey {
    let echo = key.proto == 1 || key.proto == 58;
    NatKey {
        local: target.addr,
        remote: key.remote,
        local_port: target.port,
        remote_port: if echo { target.port } else { key.remote_port },
        proto: key.proto,
        family: key.family,
        _pad: [0; 2],
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    fn key(port: u16, host: u8) -> NatKey {
        NatKey {
            local: [100, 64, 0, host, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            remote: [198, 18, 1, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            local_port: port,
            remote_port: 443,
            proto: 6,
            family: 4,
            _pad: [0; 2],
        }
    }

    #[test]
    fn bucket_counts_are_powers_of_two_that_hold_the_entries() {
        assert_eq!(buckets_for(0), 1);
        assert_eq!(buckets_for(4), 1);
        assert_eq!(buckets_for(5), 2);
        assert_eq!(buckets_for(128 * 1024), 32 * 1024);
        assert_eq!(buckets_for(100_000), 32 * 1024);
    }

    #[test]
    fn flows_spread_over_the_buckets_and_the_seed_moves_them() {
        let shape = NatTableShape {
            buckets: 1024,
            seed: 7,
        };
        let mut load = std::vec![0u32; 1024];
        for host in 0..64u8 {
            for port in 0..256u16 {
                let b = bucket_of(&key(40_000 + port, host), &shape);
                assert!(b < 1024);
                load[b as usize] += 1;
            }
        }
        // 16 per bucket on average: a fair hash keeps every bucket within a few times that.
        assert!(load.iter().all(|&n| (2..=48).contains(&n)), "{load:?}");
        let other = NatTableShape { seed: 8, ..shape };
        let moved = (0..256u16)
            .filter(|&p| bucket_of(&key(p, 1), &shape) != bucket_of(&key(p, 1), &other))
            .count();
        assert!(moved > 200, "{moved} of 256 moved with the seed");
    }

    #[test]
    fn counterparts_lead_back() {
        let k = key(40_000, 1);
        let t = NatTarget {
            addr: [198, 18, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            port: 20_001,
            ..Default::default()
        };
        let r = counterpart(&k, &t);
        assert_eq!(
            (r.local, r.local_port, r.remote_port),
            (t.addr, 20_001, 443)
        );
        let back = NatTarget {
            addr: k.local,
            port: k.local_port,
            ..Default::default()
        };
        assert_eq!(counterpart(&r, &back), k);
        // Echo: the identifier is both ports.
        let e = NatKey {
            proto: 1,
            local_port: 9,
            remote_port: 9,
            ..k
        };
        let re = counterpart(&e, &t);
        assert_eq!((re.local_port, re.remote_port), (20_001, 20_001));
    }
}
