//! The controller's access to the masquerade's translation tables (gateway_common::nat_table):
//! two bucket tables, one per direction, under one shape.

use gateway_common::{
    maps as names,
    nat::{NatKey, NatTarget},
    nat_table::NatWay,
};

use crate::buckets::BucketTable;

/// Which direction's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// By original tuple (the peer's source, the LAN host).
    Forward,
    /// By translated tuple (the masquerade address and port, the LAN host).
    Reverse,
}

pub struct NatTables {
    forward: BucketTable<NatKey, NatTarget>,
    reverse: BucketTable<NatKey, NatTarget>,
}

impl NatTables {
    /// The tables of a loaded object.
    pub fn of(ebpf: &aya::Ebpf) -> anyhow::Result<NatTables> {
        Ok(NatTables {
            forward: BucketTable::of(ebpf, names::NAT_FORWARD, names::NAT_TABLE_SHAPE)?,
            reverse: BucketTable::of(ebpf, names::NAT_REVERSE, names::NAT_TABLE_SHAPE)?,
        })
    }

    /// One direction's table (the carry-over from earlier releases writes it too).
    pub(crate) fn table(&self, d: Direction) -> &BucketTable<NatKey, NatTarget> {
        match d {
            Direction::Forward => &self.forward,
            Direction::Reverse => &self.reverse,
        }
    }

    /// Every translation in one table: (key, target), each bucket read consistently.
    pub fn entries(&self, d: Direction) -> Vec<NatWay> {
        self.table(d).entries()
    }

    /// How many translations one table holds.
    pub fn count(&self, d: Direction) -> usize {
        self.table(d).count()
    }

    pub fn get(&self, d: Direction, key: &NatKey) -> Option<NatTarget> {
        self.table(d).get(key)
    }

    /// Clears `key`'s translation if it still leads to `addr` and `port`; whether it did.
    pub fn remove(
        &self,
        d: Direction,
        key: &NatKey,
        addr: &[u8; 16],
        port: u16,
    ) -> anyhow::Result<bool> {
        self.table(d)
            .remove_if(key, |t| t.addr == *addr && t.port == port)
    }

    /// Records `key` → `target` in its own way or an empty one (never evicting): whether there
    /// was room. For tests.
    pub fn insert(&self, d: Direction, key: &NatKey, target: &NatTarget) -> anyhow::Result<bool> {
        self.table(d).insert(key, target)
    }

    /// Sets the last-seen time of `key`'s translation (tests age translations with it).
    pub fn set_last_seen(&self, d: Direction, key: &NatKey, ns: u64) -> anyhow::Result<bool> {
        self.table(d).update(key, |t| {
            t.last_seen_ns = ns;
            true
        })
    }
}
