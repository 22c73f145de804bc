//! What a controller adopting the data plane of an earlier release takes over from its flow
//! tables of another layout: conntrack's LRU hash map (`CT_V1`), the masquerade's LRU hash maps
//! (`NAT_*_V1`) and its bucket tables without room to spare (`NAT_*_V2` under `NAT_SHAPE_V1`).
//!
//! In two passes. The first, as the new programs are loaded, copies what the old tables hold.
//! The old programs keep running on the old tables until this process's programs replace them
//! on every interface, and the flows they start meanwhile are only in the old tables: the
//! second pass, once the new programs are attached, copies those too (an entry the new tables
//! hold already is newer, and kept), then unpins the old maps. A start that fails before the
//! second pass leaves them pinned, for the next start to carry over.

use gateway_common::{maps as names, settings::Timeouts};

use crate::{
    buckets,
    nat_table::{Direction, NatTables},
    pins::PinDir,
};

/// Every old map this module carries over: its pinned name, and its shape's where it has one.
const OLD_MAPS: [(&str, Option<&str>); 5] = [
    (names::CONNTRACK_V1_LRU, None),
    (names::NAT_FORWARD_V1_LRU, None),
    (names::NAT_REVERSE_V1_LRU, None),
    (names::NAT_FORWARD_V2_TIGHT, Some(names::NAT_TABLE_SHAPE_V1)),
    (names::NAT_REVERSE_V2_TIGHT, Some(names::NAT_TABLE_SHAPE_V1)),
];

/// Whether an earlier release's tables are pinned under `pins`.
pub fn pending(pins: &PinDir) -> bool {
    OLD_MAPS.iter().any(|(name, _)| pins.map(name).exists())
}

/// Copies what the old tables hold into this object's tables (entries the new tables hold
/// already are kept; conntrack's flows no longer live are left behind).
pub fn copy(ebpf: &aya::Ebpf, pins: &PinDir, timeouts: &Timeouts) -> anyhow::Result<()> {
    if !pending(pins) {
        return Ok(());
    }
    let now = crate::sweep::monotonic_coarse_ns();
    buckets::copy_lru(
        &crate::Dataplane::conntrack_table_of(ebpf)?,
        pins,
        names::CONNTRACK_V1_LRU,
        |key, entry| gateway_common::conntrack::is_live(key, entry, timeouts, now),
    )?;
    let nat = NatTables::of(ebpf)?;
    for (name, direction) in [
        (names::NAT_FORWARD_V1_LRU, Direction::Forward),
        (names::NAT_REVERSE_V1_LRU, Direction::Reverse),
    ] {
        // The old layout's padding byte is the new one's `replied`: unknown, so unset.
        buckets::copy_lru(nat.table_of(direction), pins, name, |_, t| {
            t.replied = 0;
            true
        })?;
    }
    for (name, direction) in [
        (names::NAT_FORWARD_V2_TIGHT, Direction::Forward),
        (names::NAT_REVERSE_V2_TIGHT, Direction::Reverse),
    ] {
        buckets::copy_buckets(
            nat.table_of(direction),
            pins,
            name,
            names::NAT_TABLE_SHAPE_V1,
            |_, _| true,
        )?;
    }
    Ok(())
}

/// The second pass: copies again what the old programs added since [`copy`], then unpins the
/// old maps (and their shape). Call once this process's programs replaced the old ones.
pub fn finish(ebpf: &aya::Ebpf, pins: &PinDir, timeouts: &Timeouts) -> anyhow::Result<()> {
    if !pending(pins) {
        return Ok(());
    }
    copy(ebpf, pins, timeouts)?;
    let shapes = OLD_MAPS.iter().filter_map(|(_, shape)| *shape);
    for name in OLD_MAPS.iter().map(|(name, _)| *name).chain(shapes) {
        let path = pins.map(name);
        if path.exists() {
            std::fs::remove_file(&path)
                .map_err(|e| anyhow::anyhow!("unpinning {}: {e}", path.display()))?;
        }
    }
    Ok(())
}
