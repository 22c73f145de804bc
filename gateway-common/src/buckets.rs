//! Flow tables as the kernel and the controller share them: arrays of buckets of [`WAYS`]
//! entries each, outside the kernel's hash maps. Conntrack (`conntrack`) and the masquerade's
//! two translation tables (`nat_table`) are such tables.
//!
//! Why not LRU hash maps: recording a new flow there (a lookup that misses, then an insert
//! that evicts from a full table under the LRU's locks) cost more than the TC path's whole
//! forwarding of the packet; bench/RESULTS.md measures it.
//!
//! - An entry lives in the bucket its key hashes to; a bucket holds [`WAYS`] of them.
//! - Writers (the kernel's programs and the controller) take a bucket with one
//!   compare-and-swap on its sequence word (odd: taken), write, and release it by adding one.
//!   They never wait: a bucket that is taken is a failed attempt, so no program spins.
//! - Readers take no lock: they read the sequence word before and after the ways they read,
//!   and trust what they read only when it was even and did not change.
//! - A bucket without a free way gives up an entry by its table's rule (each table says which:
//!   see [`Aging`]).
//! - The hash is keyed by a random seed kept in the table's pinned [`TableShape`], so that a
//!   peer cannot choose tuples that fill one bucket, and the table keeps its meaning across a
//!   restart of the controller.

use crate::assert_size;

/// Entries per bucket.
pub const WAYS: usize = 4;

/// One entry of a table. An empty way has protocol 0 in its key (no flow has).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Way<K, V> {
    pub key: K,
    pub value: V,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket<W> {
    /// Even: free; odd: a writer holds the bucket. Bumped by one at each take and release, so
    /// a reader that saw the same even value before and after its reads saw no write.
    pub seq: u64,
    pub ways: [W; WAYS],
}

/// A table's shape: how many buckets it has (a power of two) and its hash's seed. Pinned with
/// the table: written once when it is created, read by every program run.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableShape {
    pub buckets: u32,
    pub seed: u32,
}
assert_size!(TableShape, 8);

crate::user_pod!(TableShape);

/// What a table's key tells of its way.
pub trait TableKey {
    /// Whether the way holds nothing (its key's protocol is 0).
    fn is_vacant(&self) -> bool;
}

/// What a full bucket judges its entries by when it must give one up.
pub trait Aging {
    /// When a packet of the entry was last seen (CLOCK_MONOTONIC_COARSE, ns).
    fn last_seen_ns(&self) -> u64;
    /// Whether the entry's flow was answered (its answered entries go last, or never).
    fn replied(&self) -> bool;
}

/// Implements [`TableKey`] and [`Aging`] for a flow table's key type, whose `proto` is 0 only
/// in a vacant way, and its value type, with `last_seen_ns` and `replied` (non-zero: answered).
#[macro_export]
macro_rules! flow_table_entry {
    ($key:ty, $value:ty) => {
        impl $crate::buckets::TableKey for $key {
            #[inline(always)]
            fn is_vacant(&self) -> bool {
                self.proto == 0
            }
        }

        impl $crate::buckets::Aging for $value {
            #[inline(always)]
            fn last_seen_ns(&self) -> u64 {
                self.last_seen_ns
            }
            #[inline(always)]
            fn replied(&self) -> bool {
                self.replied != 0
            }
        }
    };
}

/// Buckets for `entries` entries: a power of two, at least one.
pub const fn buckets_for(entries: u32) -> u32 {
    let b = entries.div_ceil(WAYS as u32);
    if b <= 1 { 1 } else { b.next_power_of_two() }
}

/// The bucket `key` lives in (`shape.buckets` is a power of two). The key is read as 32-bit
/// words in memory order (the kernel and the controller share the layout and the byte order),
/// so that no copy of it lands on the kernel programs' small stack. `K` must be 4-aligned, its
/// size a multiple of 4, and without padding: checked when the program is built.
#[inline(always)]
pub fn bucket_of<K>(key: &K, shape: &TableShape) -> u32 {
    const {
        assert!(align_of::<K>() >= 4 && size_of::<K>().is_multiple_of(4));
    }
    let words = key as *const K as *const u32;
    // Every word into a multiply-rotate mix, then murmur3's finaliser.
    let mut h = shape.seed ^ 0x9e37_79b9;
    let mut i = 0;
    while i < size_of::<K>() / 4 {
        // SAFETY: within the key (checked above), whose bytes are all fields.
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

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[repr(C, align(8))]
    struct Key {
        host: u32,
        port: u32,
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
    fn keys_spread_over_the_buckets_and_the_seed_moves_them() {
        let shape = TableShape {
            buckets: 1024,
            seed: 7,
        };
        let mut load = std::vec![0u32; 1024];
        for host in 0..64u32 {
            for port in 0..256u32 {
                let b = bucket_of(
                    &Key {
                        host,
                        port: 40_000 + port,
                    },
                    &shape,
                );
                assert!(b < 1024);
                load[b as usize] += 1;
            }
        }
        // 16 per bucket on average: a fair hash keeps every bucket within a few times that.
        assert!(load.iter().all(|&n| (2..=48).contains(&n)), "{load:?}");
        let other = TableShape { seed: 8, ..shape };
        let moved = (0..256u32)
            .filter(|&port| {
                let k = Key { host: 1, port };
                bucket_of(&k, &shape) != bucket_of(&k, &other)
            })
            .count();
        assert!(moved > 200, "{moved} of 256 moved with the seed");
    }
}
