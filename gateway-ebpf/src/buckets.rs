//! Bucket tables (gateway_common::buckets has the layout and the rules): readers take no
//! lock; a writer takes a bucket with one compare-and-swap and never waits.
//!
//! Memory order: the take and the release are BPF atomics with fetch, which are full
//! barriers on every JIT; a reader's loads are plain (volatile) loads, kept in program order,
//! which x86-64 does not reorder with each other. (A weakly ordered CPU would want BPF's
//! load-acquire there, which needs kernel 6.15.)

use aya_ebpf::maps::Array;
use gateway_common::buckets::{Aging, Bucket, TableKey, TableShape, WAYS, Way, bucket_of};

use crate::copy::{copy_words, same_words};

pub type Table<K, V> = Array<Bucket<Way<K, V>>>;

/// What [`claim`] did.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Claim {
    /// The key now holds the value given.
    Claimed,
    /// A live entry holds the key already (copied into `found`).
    Taken,
    /// Every way of the bucket holds an entry the table's rule keeps.
    Full,
    /// Another writer held the bucket.
    Busy,
}

/// What [`look_up`] found.
pub enum Found<V> {
    /// The way's value (its packets refresh it there).
    At(*mut V),
    Absent,
    /// A writer held the bucket, or wrote it while it was read: nothing can be said.
    Busy,
}

impl<V> Found<V> {
    /// The value's place, for callers to whom a bucket being written is as good as no entry.
    #[inline(always)]
    pub fn at(self) -> Option<*mut V> {
        match self {
            Found::At(v) => Some(v),
            Found::Absent | Found::Busy => None,
        }
    }
}

/// `key`'s bucket in `table`.
#[inline(always)]
fn bucket<K, V>(
    table: &'static Table<K, V>,
    shape: &'static Array<TableShape>,
    key: &K,
) -> Option<*mut Bucket<Way<K, V>>> {
    let shape = shape.get(0)?;
    if shape.buckets == 0 {
        return None;
    }
    table.get_ptr_mut(bucket_of(key, shape))
}

/// Whether the way's key is `key`, read a word at a time (both are 8-aligned).
#[inline(always)]
fn holds<K, V>(way: *const Way<K, V>, key: &K) -> bool {
    const {
        assert!(align_of::<K>() >= 8 && size_of::<K>() % 8 == 0);
    }
    // SAFETY: both point at a whole, 8-aligned `K` (the way's comes first in it).
    unsafe {
        same_words(
            way as *const u64,
            key as *const K as *const u64,
            size_of::<K>() / 8,
        )
    }
}

/// Finds `key`: `seen` is given its way's value while the bucket is read (to copy what must be
/// consistent), and the result says where the value is. One look, not repeated: every repeat
/// multiplies the paths the verifier walks through each caller, and a bucket is written only
/// when a flow hashed to it begins or ends.
#[inline(always)]
pub fn look_up<K, V>(
    table: &'static Table<K, V>,
    shape: &'static Array<TableShape>,
    key: &K,
    mut seen: impl FnMut(&V),
) -> Found<V> {
    let Some(b) = bucket(table, shape, key) else {
        return Found::Busy;
    };
    // SAFETY: a valid map value.
    let before = unsafe { core::ptr::read_volatile(&(*b).seq) };
    if before & 1 != 0 {
        return Found::Busy;
    }
    let mut at = WAYS;
    let mut i = 0;
    while i < WAYS {
        // SAFETY: i < WAYS.
        if holds(unsafe { (*b).ways.as_ptr().add(i) }, key) {
            at = i;
            break;
        }
        i += 1;
    }
    let mut found = Found::Absent;
    if at < WAYS {
        // SAFETY: as above.
        let middle = unsafe { core::ptr::read_volatile(&(*b).seq) };
        // The sequence word only grows: if it reads the same at the end, it read the same here.
        let at = opaque_index(at, before, middle);
        // SAFETY: at < WAYS.
        let value = unsafe { &raw mut (*(*b).ways.as_mut_ptr().add(at)).value };
        // SAFETY: a valid way.
        seen(unsafe { &*value });
        found = Found::At(value);
    }
    // SAFETY: as above.
    if unsafe { core::ptr::read_volatile(&(*b).seq) } != before {
        return Found::Busy;
    }
    found
}

/// Way index `i` as the verifier cannot know it, given two readings of one bucket's sequence
/// word that are equal at run time (`i + a - b`, kept below [`WAYS`]). Each way's index is
/// otherwise a constant to the verifier, and it walks everything after a lookup or a claim
/// once per way; unknown, the paths from every way are one state, walked once.
#[inline(always)]
fn opaque_index(i: usize, a: u64, b: u64) -> usize {
    (i.wrapping_add(a as usize).wrapping_sub(b as usize)) & (WAYS - 1)
}

/// Takes the bucket for writing, or fails at once if another writer has it.
#[inline(always)]
fn take<W>(b: *mut Bucket<W>) -> bool {
    // SAFETY: a valid map value.
    let seq = unsafe { core::ptr::read_volatile(&(*b).seq) };
    // SAFETY: the sequence word is 8-aligned map memory.
    seq & 1 == 0 && unsafe { compare_and_swap(&raw mut (*b).seq, seq, seq + 1) } == seq
}

#[inline(always)]
fn release<W>(b: *mut Bucket<W>) {
    // SAFETY: the sequence word is 8-aligned map memory; the caller holds the bucket.
    unsafe { fetch_add(&raw mut (*b).seq, 1) };
}

/// Writes a way whole (volatile word stores: a struct assignment is a byte-at-a-time memmove
/// in BPF).
#[inline(always)]
fn write_way<K: Copy, V: Copy>(way: *mut Way<K, V>, key: &K, value: &V) {
    // SAFETY: a valid way of a bucket the caller holds.
    unsafe {
        copy_words(&mut (*way).key, key);
        copy_words(&mut (*way).value, value);
    }
}

/// Empties a way (all zero: protocol 0).
#[inline(always)]
fn vacate<K, V>(way: *mut Way<K, V>) {
    let w = way as *mut u64;
    let mut i = 0;
    while i < size_of::<Way<K, V>>() / 8 {
        // SAFETY: within the way, of a bucket the caller holds.
        unsafe { core::ptr::write_volatile(w.add(i), 0) };
        i += 1;
    }
}

/// What a full bucket may give up for a new entry.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Evict {
    /// Its oldest entry never replied to; an answered one never (the bucket is then full).
    Unanswered,
    /// Its oldest entry never replied to, failing that its oldest.
    Oldest,
}

/// Records `key` → `value` in `table`, unless `keep_same` and an entry `is_live` calls live
/// holds the key (then it is copied into `found`); without `keep_same`, the key's way is
/// rewritten whatever it held. A way that is empty, or holds an entry no longer live, is
/// taken first; failing those, one is evicted as `evict` says, and counted in `EVICTED` from
/// the table's index `counters` (`gateway_common::stats::evicted`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn claim<K: TableKey + Copy, V: Aging + Copy>(
    table: &'static Table<K, V>,
    shape: &'static Array<TableShape>,
    key: &K,
    value: &V,
    found: &mut V,
    keep_same: bool,
    evict: Evict,
    counters: u32,
    mut is_live: impl FnMut(&K, &V) -> bool,
) -> Claim {
    let Some(b) = bucket(table, shape, key) else {
        return Claim::Busy;
    };
    if !take(b) {
        return Claim::Busy;
    }
    // Two readings of the sequence word, equal while the bucket is ours: the ways chosen below
    // are kept as indices the verifier cannot know (see `opaque_index`).
    // SAFETY: a valid map value.
    let (s0, s1) = unsafe {
        (
            core::ptr::read_volatile(&(*b).seq),
            core::ptr::read_volatile(&(*b).seq),
        )
    };
    const NONE: usize = WAYS;
    let (mut same, mut free, mut victim, mut oldest) = (NONE, NONE, NONE, NONE);
    let (mut victim_seen, mut oldest_seen) = (u64::MAX, u64::MAX);
    let mut i = 0;
    while i < WAYS {
        // SAFETY: i < WAYS; the bucket is ours.
        let way = unsafe { (*b).ways.as_mut_ptr().add(i) };
        // SAFETY: as above.
        let (k, v) = unsafe { (&(*way).key, &(*way).value) };
        if k.is_vacant() {
            if free == NONE {
                free = opaque_index(i, s0, s1);
            }
        } else if holds(way, key) {
            same = opaque_index(i, s0, s1);
            break;
        } else if !is_live(k, v) {
            if free == NONE {
                free = opaque_index(i, s0, s1);
            }
        } else {
            let seen = v.last_seen_ns();
            if !v.replied() && seen < victim_seen {
                victim = opaque_index(i, s0, s1);
                victim_seen = seen;
            }
            if evict == Evict::Oldest && seen < oldest_seen {
                oldest = opaque_index(i, s0, s1);
                oldest_seen = seen;
            }
        }
        i += 1;
    }
    let use_way = if same != NONE {
        // SAFETY: same < WAYS.
        let way = unsafe { (*b).ways.as_mut_ptr().add(same & (WAYS - 1)) };
        // SAFETY: as above.
        let (k, v) = unsafe { (&(*way).key, &(*way).value) };
        if keep_same && is_live(k, v) {
            copy_words(found, v);
            release(b);
            return Claim::Taken;
        }
        same
    } else if free != NONE {
        free
    } else if victim != NONE {
        count_eviction(counters);
        victim
    } else if oldest != NONE {
        // Every live way was answered (an unanswered one would be the victim).
        count_eviction(counters + 1);
        oldest
    } else {
        release(b);
        return Claim::Full;
    };
    // SAFETY: below WAYS.
    write_way(
        unsafe { (*b).ways.as_mut_ptr().add(use_way & (WAYS - 1)) },
        key,
        value,
    );
    release(b);
    Claim::Claimed
}

#[inline(always)]
fn count_eviction(index: u32) {
    if let Some(c) = crate::maps::EVICTED.get_ptr_mut(index) {
        // SAFETY: this CPU's own counter.
        unsafe { *c += 1 };
    }
}

/// Empties `key`'s way in `table` if `still` says its value is still the caller's to remove.
/// False only when another writer held the bucket: the way may still be there.
#[inline(always)]
pub fn remove<K, V>(
    table: &'static Table<K, V>,
    shape: &'static Array<TableShape>,
    key: &K,
    still: impl FnOnce(&V) -> bool,
) -> bool {
    let Some(b) = bucket(table, shape, key) else {
        return false;
    };
    if !take(b) {
        return false;
    }
    let mut i = 0;
    while i < WAYS {
        // SAFETY: i < WAYS; the bucket is ours.
        let way = unsafe { (*b).ways.as_mut_ptr().add(i) };
        if holds(way, key) {
            // SAFETY: as above.
            if still(unsafe { &(*way).value }) {
                vacate(way);
            }
            break;
        }
        i += 1;
    }
    release(b);
    true
}

/// `*p` becomes `new` if it was `old`; returns what it was (BPF_CMPXCHG, a full barrier).
#[inline(always)]
unsafe fn compare_and_swap(p: *mut u64, old: u64, new: u64) -> u64 {
    let mut r0 = old;
    // SAFETY: the caller passes 8-aligned map memory.
    unsafe {
        core::arch::asm!(
            "r0 = cmpxchg_64({p} + 0, r0, {new})",
            p = in(reg) p,
            new = in(reg) new,
            inout("r0") r0,
        )
    };
    r0
}

/// `*p += v`, returning the old value (BPF_ADD | BPF_FETCH, a full barrier).
#[inline(always)]
unsafe fn fetch_add(p: *mut u64, v: u64) -> u64 {
    let mut r = v;
    // SAFETY: the caller passes 8-aligned map memory.
    unsafe {
        core::arch::asm!(
            "{r} = atomic_fetch_add((u64 *)({p} + 0), {r})",
            p = in(reg) p,
            r = inout(reg) r,
        )
    };
    r
}
