//! Conntrack housekeeping from userspace: removes expired entries (so fill levels mean live
//! flows) and, right after a policy change, ends the flows the new policy no longer allows
//! without waiting for their next packet. The kernel applies the same two rules per packet.

use std::net::IpAddr;

use anyhow::Context as _;
use aya::maps::HashMap as BpfHashMap;
use gateway_common::{
    conntrack::{CtEntry, CtKey, FAMILY_V4, ORIGIN_POLICY, ORIGIN_REVOKED, STATE_TCP_CLOSED, is_live},
    maps as names,
};

use super::Dataplane;
use crate::{compile::Compiled, policy::Action};

#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct SweepReport {
    pub scanned: usize,
    pub expired: usize,
    pub revoked: usize,
}

/// CLOCK_MONOTONIC_COARSE, the clock the kernel programs stamp entries with.
pub fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn ip(family: u8, bytes: &[u8; 16]) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    } else {
        IpAddr::from(*bytes)
    }
}

impl Dataplane {
    /// Sweeps the conntrack table. With `policy` (the one just applied), flows admitted under an
    /// older generation are checked against it, in their original direction, and removed when
    /// it denies them.
    pub fn sweep_conntrack(&mut self, policy: Option<&Compiled>) -> anyhow::Result<SweepReport> {
        let now = monotonic_coarse_ns();
        let generation = self.active.generation;
        let timeouts = self.timeouts;
        let mut map: BpfHashMap<_, CtKey, CtEntry> =
            BpfHashMap::try_from(self.ebpf.map_mut(names::CONNTRACK).context("conntrack map")?)?;
        let keys: Vec<CtKey> = map.keys().filter_map(Result::ok).collect();
        let mut report = SweepReport { scanned: keys.len(), ..Default::default() };
        for key in keys {
            let Ok(entry) = map.get(&key, 0) else { continue };
            if !is_live(&key, &entry, &timeouts, now) {
                if map.remove(&key).is_ok() {
                    report.expired += 1;
                }
                continue;
            }
            let Some(compiled) = policy else { continue };
            if entry.origin != ORIGIN_POLICY || entry.generation == generation {
                continue;
            }
            let (src, dst, dport) = if entry.initiator == 0 {
                (&key.addr_a, &key.addr_b, key.port_b)
            } else {
                (&key.addr_b, &key.addr_a, key.port_a)
            };
            let verdict = compiled.lookup(ip(key.family, src), ip(key.family, dst), key.proto, dport);
            if verdict.judgement.action == Action::Drop {
                // A tombstone, as the kernel leaves one: the flow cannot come back as a local one.
                let tombstone = CtEntry {
                    origin: ORIGIN_REVOKED,
                    last_seen_ns: now,
                    state: if key.proto == 6 { STATE_TCP_CLOSED } else { entry.state },
                    ..entry
                };
                if map.insert(key, tombstone, 0).is_ok() {
                    report.revoked += 1;
                }
            }
        }
        Ok(report)
    }
}
