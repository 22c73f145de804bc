//! Conntrack housekeeping from userspace: removes expired entries (so fill levels mean live
//! flows) and, right after a policy change, ends the flows the new policy no longer allows
//! without waiting for their next packet. The kernel applies the same two rules per packet.

use std::{net::IpAddr, os::fd::AsFd as _};

use anyhow::Context as _;

use gateway_common::{
    conntrack::{CtEntry, CtKey, FAMILY_V4, ORIGIN_POLICY, is_live, revoke},
    maps as names,
    settings::Timeouts,
};

use super::Dataplane;
use crate::buckets::BucketTable;
use gateway_policy::{Action, compile::Compiled};

#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct SweepReport {
    pub scanned: usize,
    pub expired: usize,
    pub revoked: usize,
    /// Entries left after the sweep (tombstones included).
    pub live: usize,
    /// The masquerade's translations, swept after the flows.
    pub nat: crate::nat_sweep::NatSweepReport,
}

/// CLOCK_MONOTONIC_COARSE, the clock the kernel programs stamp entries with.
pub fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The kernel's tick in nanoseconds: CLOCK_MONOTONIC_COARSE's resolution (it advances once per
/// tick). 0 where the kernel does not say (the programs then assume the slowest tick).
pub fn monotonic_coarse_tick_ns() -> u64 {
    let mut res = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_getres writes into the timespec.
    if unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) } != 0 {
        return 0;
    }
    res.tv_sec as u64 * 1_000_000_000 + res.tv_nsec as u64
}

fn ip(family: u8, bytes: &[u8; 16]) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    } else {
        IpAddr::from(*bytes)
    }
}

/// A write the sweep could not make (its bucket stayed taken) is left for the next sweep.
fn skip_busy(written: anyhow::Result<bool>) -> bool {
    written.unwrap_or_else(|e| {
        tracing::warn!("conntrack sweep: {e:#}; left for the next sweep");
        false
    })
}

/// The sweep's own mapping of the conntrack table, so that the walk runs on a blocking thread
/// without holding the controller's state.
pub struct Sweeper {
    table: BucketTable<CtKey, CtEntry>,
    timeouts: Timeouts,
    nat: crate::nat_sweep::NatSweeper,
}

impl Dataplane {
    /// The conntrack table, mapped into this process.
    pub fn conntrack_table(&self) -> anyhow::Result<BucketTable<CtKey, CtEntry>> {
        Self::conntrack_table_of(&self.ebpf)
    }

    pub(crate) fn conntrack_table_of(
        ebpf: &aya::Ebpf,
    ) -> anyhow::Result<BucketTable<CtKey, CtEntry>> {
        BucketTable::of(ebpf, names::CONNTRACK, names::CONNTRACK_SHAPE)
    }

    pub fn sweeper(&self) -> anyhow::Result<Sweeper> {
        Ok(Sweeper {
            table: self.conntrack_table()?,
            timeouts: self.timeouts,
            nat: self.nat_sweeper()?,
        })
    }

    /// A second handle (a duplicated fd) on one of the data plane's array maps, for a sweep on
    /// a blocking thread that must not hold the controller's state.
    pub(crate) fn second_handle(&self, name: &str) -> anyhow::Result<aya::maps::Map> {
        use aya::maps::Map;
        let Map::Array(data) = self.ebpf.map(name).with_context(|| format!("{name} map"))? else {
            anyhow::bail!("{name} is not an array")
        };
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .with_context(|| format!("duplicating the {name} fd"))?;
        Ok(Map::Array(aya::maps::MapData::from_fd(fd)?))
    }

    /// Sweeps at once, on this thread (see [`Sweeper::sweep`]).
    pub fn sweep_conntrack(&mut self, policy: Option<&Compiled>) -> anyhow::Result<SweepReport> {
        let r = self.sweeper()?.sweep(self.active.generation, policy)?;
        self.record_sweep(&r);
        Ok(r)
    }

    /// Keeps what a sweep counted: the fill levels of the conntrack and translation tables, and
    /// of the masquerade's port range toward its busiest destination.
    pub fn record_sweep(&mut self, r: &SweepReport) {
        self.conntrack_entries = r.live as u64;
        self.nat_translations = r.nat.translations as u64;
        self.nat_busiest_destination = r.nat.busiest_destination as u64;
        self.nat_port_range = r.nat.port_range as u64;
    }
}

impl Sweeper {
    /// Sweeps the conntrack table. With `policy` (the one applied as `generation`), flows
    /// admitted under an older generation are checked against it, in their original direction,
    /// and ended when it denies them.
    pub fn sweep(
        &mut self,
        generation: u32,
        policy: Option<&Compiled>,
    ) -> anyhow::Result<SweepReport> {
        let now = monotonic_coarse_ns();
        let table = &self.table;
        let flows = table.entries();
        let mut report = SweepReport {
            scanned: flows.len(),
            ..Default::default()
        };
        let timeouts = &self.timeouts;
        for flow in flows {
            let (key, entry) = (flow.key, flow.value);
            if !is_live(&key, &entry, timeouts, now) {
                // Only if still expired: a packet may have renewed it since it was read.
                if skip_busy(table.remove_if(&key, |e| !is_live(&key, e, timeouts, now))) {
                    report.expired += 1;
                }
                continue;
            }
            report.live += 1;
            let Some(compiled) = policy else { continue };
            if entry.origin != ORIGIN_POLICY || entry.generation == generation {
                continue;
            }
            let (src, dst, dport) = if entry.initiator == 0 {
                (&key.addr_a, &key.addr_b, key.port_b)
            } else {
                (&key.addr_b, &key.addr_a, key.port_a)
            };
            let verdict =
                compiled.lookup(ip(key.family, src), ip(key.family, dst), key.proto, dport);
            if verdict.judgement.action == Action::Drop {
                // A tombstone, as the kernel leaves one: the flow cannot come back as a local one.
                // As it is now: a flow that began again, or was checked, since it was read is
                // not this sweep's to end.
                let ended = skip_busy(table.update(&key, |e| {
                    let same = e.origin == ORIGIN_POLICY
                        && e.generation == entry.generation
                        && e.initiator == entry.initiator;
                    if same {
                        revoke(e, key.proto, now);
                    }
                    same
                }));
                if ended {
                    report.revoked += 1;
                }
            }
        }
        // Translations next: the flows they belong to are now as the policy says.
        report.nat = self.nat.sweep(&self.table, now)?;
        Ok(report)
    }
}
