//! The masquerade's translation tables: two bucket tables (`buckets`) under one shape.

use gateway_common::nat::{NatKey, NatTarget};

pub use crate::buckets::{Claim, Found};
use crate::{
    buckets::{self, Evict, Table},
    copy::copy_words,
    maps,
};

/// Finds `key`'s translation: copies it into `out` and says where the way's target is.
#[inline(always)]
pub fn look_up(
    table: &'static Table<NatKey, NatTarget>,
    key: &NatKey,
    out: &mut NatTarget,
) -> Found<NatTarget> {
    buckets::look_up(table, &maps::NAT_TABLE_SHAPE, key, |t| copy_words(out, t))
}

/// [`look_up`] for callers to whom a bucket being written is as good as no translation (they
/// then leave the packet as it is, and nothing untranslated leaves for the LAN).
#[inline(always)]
pub fn find(
    table: &'static Table<NatKey, NatTarget>,
    key: &NatKey,
    out: &mut NatTarget,
) -> Option<*mut NatTarget> {
    look_up(table, key, out).at()
}

/// Records `key` → `value` (see `buckets::claim`). A full bucket evicts only a translation
/// never replied to. Its entry in the other table stays until it goes idle: a forward entry
/// is only used while its reverse entry leads back to it (`nat::translation_of`), so an
/// evicted reverse entry ends its translation at once, and a port is never used by two flows.
#[inline(always)]
pub fn claim(
    table: &'static Table<NatKey, NatTarget>,
    key: &NatKey,
    value: &NatTarget,
    found: &mut NatTarget,
    keep_same: bool,
    is_live: impl FnMut(&NatKey, &NatTarget) -> bool,
) -> Claim {
    buckets::claim(
        table,
        &maps::NAT_TABLE_SHAPE,
        key,
        value,
        found,
        keep_same,
        Evict::Unanswered,
        gateway_common::stats::evicted::NAT,
        is_live,
    )
}

/// Clears `key`'s way in `table` if it still translates to `addr` and `port` (a translation
/// changed meanwhile is not this caller's to clear). False only when another writer held the
/// bucket: the way may still be there.
#[inline(always)]
pub fn remove(
    table: &'static Table<NatKey, NatTarget>,
    key: &NatKey,
    addr: &[u8; 16],
    port: u16,
) -> bool {
    buckets::remove(table, &maps::NAT_TABLE_SHAPE, key, |t| {
        t.addr == *addr && t.port == port
    })
}
