//! What a controller adopting the data plane of an earlier release takes over from its flow
//! tables of another layout: conntrack's LRU hash map (`CT_V1`), the masquerade's LRU hash maps
//! (`NAT_*_V1`) and its bucket tables without room to spare (`NAT_*_V2` under `NAT_SHAPE_V1`).
//!
//! In two passes. The first, as the new programs are loaded, copies what the old tables hold.
//! The old programs keep running on the old tables until this process's programs replace them
//! on every interface, and what they do meanwhile (flows started, translations given to
//! another flow, flows closed) is only in the old tables: the second pass, once the new
//! programs are attached, copies again, then unpins the old maps. Both passes keep, of two
//! entries of one key, the one last seen later (the first pass's copy loses to what the old
//! programs wrote since; what the new programs wrote since wins over both), and never replace
//! a flow the new table holds as ended by a policy change. Entries idle past their timeout stay
//! behind. Copying is best effort: a table that cannot be read is logged and skipped, never a
//! reason to refuse a start (the data plane enforces either way). A start that fails before the
//! second pass leaves the old maps pinned, their programs still running: the next start carries
//! over from them again.

use gateway_common::{
    conntrack::{CtEntry, ORIGIN_REVOKED},
    maps as names,
    nat::{NatKey, NatSettings, NatTarget, timeout_ns},
    settings::Timeouts,
};

use crate::{
    buckets::{self, CarryRules},
    nat_table::{Direction, NatTables},
    pins::PinDir,
};

/// The old maps this module carries over, then their shapes.
const OLD_TABLES: [&str; 5] = [
    names::CONNTRACK_V1_LRU,
    names::NAT_FORWARD_V1_LRU,
    names::NAT_REVERSE_V1_LRU,
    names::NAT_FORWARD_V2_TIGHT,
    names::NAT_REVERSE_V2_TIGHT,
];
const OLD_SHAPES: [&str; 1] = [names::NAT_TABLE_SHAPE_V1];

/// Whether anything of an earlier release's tables is pinned under `pins`.
pub fn pending(pins: &PinDir) -> bool {
    OLD_TABLES
        .iter()
        .chain(&OLD_SHAPES)
        .any(|name| pins.map(name).exists())
}

/// Copies what the old tables hold into this object's tables (see the module's rules).
pub fn copy(ebpf: &aya::Ebpf, pins: &PinDir, timeouts: &Timeouts) {
    if !pending(pins) {
        return;
    }
    let now = crate::sweep::monotonic_coarse_ns();
    let skipped = |what: &str, e: anyhow::Error| {
        tracing::warn!("not carried over from {what}: {e:#}");
    };
    match crate::Dataplane::conntrack_table_of(ebpf) {
        Ok(table) => {
            let mut rules = CarryRules {
                adapt: |key: &_, entry: &mut CtEntry| {
                    gateway_common::conntrack::is_live(key, entry, timeouts, now)
                },
                wins: |offered: &CtEntry, held: &CtEntry| {
                    held.origin != ORIGIN_REVOKED && offered.last_seen_ns > held.last_seen_ns
                },
            };
            let name = names::CONNTRACK_V1_LRU;
            let copied = buckets::old_entries(pins, name, None)
                .and_then(|entries| rules.copy_into(&table, entries, name));
            if let Err(e) = copied {
                skipped(name, e);
            }
        }
        Err(e) => skipped("conntrack", e),
    }
    let nat = match NatTables::of(ebpf) {
        Ok(nat) => nat,
        Err(e) => return skipped("the translation tables", e),
    };
    // The controller applies the configured timeouts later; the defaults bound what is worth
    // carrying (a TCP translation by its established timeout: the entry does not say its phase).
    let defaults = NatSettings::default();
    let v2_shape = Some(names::NAT_TABLE_SHAPE_V1);
    for (name, direction, shape) in [
        (names::NAT_FORWARD_V1_LRU, Direction::Forward, None),
        (names::NAT_REVERSE_V1_LRU, Direction::Reverse, None),
        (names::NAT_FORWARD_V2_TIGHT, Direction::Forward, v2_shape),
        (names::NAT_REVERSE_V2_TIGHT, Direction::Reverse, v2_shape),
    ] {
        let mut rules = CarryRules {
            adapt: |k: &NatKey, t: &mut NatTarget| {
                if shape.is_none() {
                    // The LRU layout's padding byte is the new one's `replied`: unknown, so
                    // unset.
                    t.replied = 0;
                }
                now.saturating_sub(t.last_seen_ns) <= timeout_ns(&defaults, k.proto, true)
            },
            wins: |offered: &NatTarget, held: &NatTarget| offered.last_seen_ns > held.last_seen_ns,
        };
        let copied = buckets::old_entries(pins, name, shape)
            .and_then(|entries| rules.copy_into(nat.table(direction), entries, name));
        if let Err(e) = copied {
            skipped(name, e);
        }
    }
}

/// The second pass: copies again what the old programs changed since [`copy`], then unpins the
/// old maps and their shapes. Call once this process's programs replaced the old ones: from
/// then on the old tables change no more, and are unpinned even where copying failed (a later
/// start must not carry their stale entries over again).
pub fn finish(ebpf: &aya::Ebpf, pins: &PinDir, timeouts: &Timeouts) -> anyhow::Result<()> {
    if !pending(pins) {
        return Ok(());
    }
    copy(ebpf, pins, timeouts);
    for name in OLD_TABLES.iter().chain(&OLD_SHAPES) {
        let path = pins.map(name);
        if path.exists() {
            std::fs::remove_file(&path)
                .map_err(|e| anyhow::anyhow!("unpinning {}: {e}", path.display()))?;
        }
    }
    Ok(())
}
