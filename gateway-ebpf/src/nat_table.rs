//! The translation tables' buckets (gateway_common::nat_table has the layout and the rules):
//! readers take no lock; a writer takes a bucket with one compare-and-swap and never waits.
//!
//! Memory order: the take and the release are BPF atomics with fetch, which are full
//! barriers on every JIT; a reader's loads are plain (volatile) loads, kept in program order,
//! which x86-64 does not reorder with each other. (A weakly ordered CPU would want BPF's
//! load-acquire there, which needs kernel 6.15.)

use aya_ebpf::maps::Array;
use gateway_common::{
    nat::{NatKey, NatTarget},
    nat_table::{NAT_WAYS, NatBucket, NatWay, bucket_of},
};

use crate::{copy::copy_words, maps};

pub type Table = Array<NatBucket>;

/// What [`claim`] did.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Claim {
    /// The key now translates to the value given.
    Claimed,
    /// A live translation holds the key already (copied into `found`).
    Taken,
    /// Every way of the bucket holds a translation that was replied to.
    Full,
    /// Another writer held the bucket.
    Busy,
}

/// `key`'s bucket in `table`.
#[inline(always)]
fn bucket(table: &'static Table, key: &NatKey) -> Option<*mut NatBucket> {
    let shape = maps::NAT_TABLE_SHAPE.get(0)?;
    if shape.buckets == 0 {
        return None;
    }
    table.get_ptr_mut(bucket_of(key, shape))
}

/// Whether the way's key is `key`, read a word at a time (both are 8-aligned).
#[inline(always)]
fn holds(way: *const NatWay, key: &NatKey) -> bool {
    let (a, b) = (way as *const u64, key as *const NatKey as *const u64);
    let mut i = 0;
    while i < size_of::<NatKey>() / 8 {
        // SAFETY: both point at a whole `NatKey` (the way's comes first in it).
        if unsafe { core::ptr::read_volatile(a.add(i)) != core::ptr::read_volatile(b.add(i)) } {
            return false;
        }
        i += 1;
    }
    true
}

/// Protocol 0: the way is empty.
#[inline(always)]
fn is_empty(way: *const NatWay) -> bool {
    // SAFETY: a valid way.
    unsafe { core::ptr::read_volatile(&(*way).key.proto) == 0 }
}

/// What [`look_up`] found.
pub enum Found {
    /// The way's target (its packets refresh it there), copied into `out`.
    At(*mut NatTarget),
    Absent,
    /// A writer held the bucket, or wrote it while it was read: nothing can be said.
    Busy,
}

/// Finds `key`'s translation: copies it into `out` and says where the way's target is. One
/// look, not repeated: every repeat multiplies the paths the verifier walks through each
/// caller, and a bucket is written only when a flow hashed to it begins or ends.
#[inline(always)]
pub fn look_up(table: &'static Table, key: &NatKey, out: &mut NatTarget) -> Found {
    let Some(b) = bucket(table, key) else {
        return Found::Busy;
    };
    // SAFETY: a valid map value.
    let before = unsafe { core::ptr::read_volatile(&(*b).seq) };
    if before & 1 != 0 {
        return Found::Busy;
    }
    let mut found = Found::Absent;
    let mut i = 0;
    while i < NAT_WAYS {
        // SAFETY: i < NAT_WAYS.
        let way = unsafe { (*b).ways.as_mut_ptr().add(i) };
        if holds(way, key) {
            // SAFETY: a valid way.
            copy_words(out, unsafe { &(*way).target });
            found = Found::At(unsafe { &mut (*way).target as *mut NatTarget });
            break;
        }
        i += 1;
    }
    // SAFETY: as above.
    if unsafe { core::ptr::read_volatile(&(*b).seq) } != before {
        return Found::Busy;
    }
    found
}

/// [`look_up`] for callers to whom a bucket being written is as good as no translation (they
/// then leave the packet as it is, and nothing untranslated leaves for the LAN).
#[inline(always)]
pub fn find(table: &'static Table, key: &NatKey, out: &mut NatTarget) -> Option<*mut NatTarget> {
    match look_up(table, key, out) {
        Found::At(t) => Some(t),
        Found::Absent | Found::Busy => None,
    }
}

/// Takes the bucket for writing, or fails at once if another writer has it.
#[inline(always)]
fn take(b: *mut NatBucket) -> bool {
    // SAFETY: a valid map value.
    let seq = unsafe { core::ptr::read_volatile(&(*b).seq) };
    // SAFETY: the sequence word is 8-aligned map memory.
    seq & 1 == 0 && unsafe { compare_and_swap(&raw mut (*b).seq, seq, seq + 1) } == seq
}

#[inline(always)]
fn release(b: *mut NatBucket) {
    // SAFETY: the sequence word is 8-aligned map memory; the caller holds the bucket.
    unsafe { fetch_add(&raw mut (*b).seq, 1) };
}

/// Writes a way whole (volatile word stores: a struct assignment is a byte-at-a-time memmove
/// in BPF).
#[inline(always)]
fn write_way(way: *mut NatWay, key: &NatKey, value: &NatTarget) {
    // SAFETY: a valid way of a bucket the caller holds.
    unsafe {
        copy_words(&mut (*way).key, key);
        copy_words(&mut (*way).target, value);
    }
}

#[inline(always)]
fn clear_way(way: *mut NatWay) {
    let w = way as *mut u64;
    let mut i = 0;
    while i < size_of::<NatWay>() / 8 {
        // SAFETY: within the way, of a bucket the caller holds.
        unsafe { core::ptr::write_volatile(w.add(i), 0) };
        i += 1;
    }
}

/// Records `key` → `value` in `table`, unless `keep_same` and a translation `is_live` calls
/// live holds the key (then it is copied into `found`); without `keep_same`, the key's way is
/// rewritten whatever it held. A way that is empty, or holds a translation no longer
/// live, is taken first; failing those, the oldest translation never replied to is evicted.
/// Its entry in the other table stays until it goes idle: a forward entry is only used while
/// its reverse entry leads back to it (`nat::translation_of`), so an evicted reverse entry
/// ends its translation at once, and a port is never used by two flows.
#[inline(always)]
pub fn claim(
    table: &'static Table,
    key: &NatKey,
    value: &NatTarget,
    found: &mut NatTarget,
    keep_same: bool,
    mut is_live: impl FnMut(&NatKey, &NatTarget) -> bool,
) -> Claim {
    let Some(b) = bucket(table, key) else {
        return Claim::Busy;
    };
    if !take(b) {
        return Claim::Busy;
    }
    const NONE: usize = NAT_WAYS;
    let (mut same, mut free, mut victim) = (NONE, NONE, NONE);
    let mut victim_seen = u64::MAX;
    let mut i = 0;
    while i < NAT_WAYS {
        // SAFETY: i < NAT_WAYS; the bucket is ours.
        let way = unsafe { (*b).ways.as_mut_ptr().add(i) };
        if is_empty(way) {
            if free == NONE {
                free = i;
            }
        } else if holds(way, key) {
            same = i;
            break;
        } else {
            // SAFETY: as above.
            let (k, t) = unsafe { (&(*way).key, &(*way).target) };
            if !is_live(k, t) {
                if free == NONE {
                    free = i;
                }
            } else if t.replied == 0 && t.last_seen_ns < victim_seen {
                victim = i;
                victim_seen = t.last_seen_ns;
            }
        }
        i += 1;
    }
    let use_way = if same != NONE {
        // SAFETY: same < NAT_WAYS.
        let way = unsafe { (*b).ways.as_mut_ptr().add(same) };
        // SAFETY: as above.
        let (k, t) = unsafe { (&(*way).key, &(*way).target) };
        if keep_same && is_live(k, t) {
            copy_words(found, t);
            release(b);
            return Claim::Taken;
        }
        same
    } else if free != NONE {
        free
    } else if victim != NONE {
        victim
    } else {
        release(b);
        return Claim::Full;
    };
    // SAFETY: use_way < NAT_WAYS.
    write_way(unsafe { (*b).ways.as_mut_ptr().add(use_way) }, key, value);
    release(b);
    Claim::Claimed
}

/// Clears `key`'s way in `table` if it still translates to `addr` and `port` (a translation
/// changed meanwhile is not this caller's to clear). False only when another writer held the
/// bucket: the way may still be there.
#[inline(always)]
pub fn remove(table: &'static Table, key: &NatKey, addr: &[u8; 16], port: u16) -> bool {
    let Some(b) = bucket(table, key) else {
        return false;
    };
    if !take(b) {
        return false;
    }
    let mut i = 0;
    while i < NAT_WAYS {
        // SAFETY: i < NAT_WAYS; the bucket is ours.
        let way = unsafe { (*b).ways.as_mut_ptr().add(i) };
        if holds(way, key) {
            // SAFETY: as above.
            if unsafe { (*way).target.addr == *addr && (*way).target.port == port } {
                clear_way(way);
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
