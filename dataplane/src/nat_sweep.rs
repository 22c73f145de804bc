//! Masquerade housekeeping from userspace, run with the conntrack sweep (right after it, so a
//! flow the new policy ended has its tombstone already):
//! - a translation whose flow the policy revoked gives its port back at once, and one whose flow
//!   is gone from conntrack (closed and expired) once idle for 4 minutes, instead of holding it
//!   until its own idle timeout (2 h 4 min for TCP);
//! - a TCP translation whose connection never got established, or is closing, goes after the
//!   transitory timeout (RFC 5382: 4 minutes) rather than the established one (2 h 4 min);
//! - what is left is counted: translations in force, and the most ports in use toward one
//!   destination (address, port, protocol), which is what runs out first.
//!
//! The kernel only reuses a port whose translation is idle past its timeout; it never needs this
//! sweep to be correct, only to free ports sooner.

use std::collections::HashMap;

use anyhow::Context as _;
use aya::maps::{Array, MapData};
use gateway_common::{
    conntrack::{CtEntry, CtKey, ORIGIN_REVOKED, STATE_TCP_ESTABLISHED, flow_key},
    maps as names,
    nat::{NatKey, NatSettings, NatTarget, timeout_ns},
    nat_table::counterpart,
    settings::{FLAG_CONNTRACK, Settings},
};

use crate::{
    Dataplane,
    nat_table::{Direction, NatTables},
};

const PROTO_TCP: u8 = 6;
const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;

/// What one NAT sweep did and found.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct NatSweepReport {
    /// Translations in force after the sweep (forward entries; each has its reverse).
    pub translations: usize,
    /// Removed because their flow ended: revoked, closed or gone from conntrack.
    pub flow_ended: usize,
    /// TCP translations of connections never established (or closing), idle past the
    /// transitory timeout.
    pub transitory: usize,
    /// Idle past their protocol's timeout.
    pub idle: usize,
    /// The most translations toward one destination (address, port, protocol): each needs its
    /// own port of the range.
    pub busiest_destination: usize,
    /// Ports in the configured range.
    pub port_range: usize,
}

/// The sweep's own mapping of the NAT tables and handles on its settings (second fds), so that
/// it runs on a blocking thread.
pub struct NatSweeper {
    tables: NatTables,
    settings: Array<MapData, NatSettings>,
    gateway_settings: Array<MapData, Settings>,
}

impl Dataplane {
    pub fn nat_sweeper(&self) -> anyhow::Result<NatSweeper> {
        Ok(NatSweeper {
            tables: self.nat_tables()?,
            settings: Array::try_from(self.second_handle(names::NAT_SETTINGS)?)?,
            gateway_settings: Array::try_from(self.second_handle(names::SETTINGS)?)?,
        })
    }
}

/// The conntrack key of a translated flow: the peer opened it (for ICMP echo, the peer asked).
pub fn conntrack_key(key: &NatKey) -> CtKey {
    let echo = (key.proto == PROTO_ICMP || key.proto == PROTO_ICMPV6).then_some(true);
    flow_key(
        &key.local,
        key.local_port,
        &key.remote,
        key.remote_port,
        key.proto,
        key.family,
        echo,
    )
    .0
}

/// Why a translation should go now, if it should. `flow`: the flow's conntrack entry (`None`:
/// not in the table), or no opinion when conntrack is off (`tracked` false).
pub fn verdict(
    key: &NatKey,
    target: &NatTarget,
    s: &NatSettings,
    tracked: bool,
    flow: Option<&CtEntry>,
    now_ns: u64,
) -> Option<Removal> {
    let idle = now_ns.saturating_sub(target.last_seen_ns);
    if tracked {
        match flow {
            // Gone from conntrack: closed and expired, or pushed out of a full table while it
            // still lives. A live flow keeps its translation fresh, so only one idle for the
            // transitory timeout goes (never one whose packets would then leave untranslated).
            None if idle > timeout_ns(s, PROTO_TCP, false) => return Some(Removal::FlowEnded),
            None => {}
            Some(e) if e.origin == ORIGIN_REVOKED => return Some(Removal::FlowEnded),
            Some(e)
                if key.proto == PROTO_TCP
                    && e.state != STATE_TCP_ESTABLISHED
                    && idle > timeout_ns(s, PROTO_TCP, false) =>
            {
                return Some(Removal::Transitory);
            }
            Some(_) => {}
        }
    }
    (idle > timeout_ns(s, key.proto, true)).then_some(Removal::Idle)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    FlowEnded,
    Transitory,
    Idle,
}

impl NatSweeper {
    /// Sweeps the translations against `conntrack` (the table the conntrack sweep just went
    /// through) at `now_ns` (CLOCK_MONOTONIC_COARSE).
    pub fn sweep(
        &mut self,
        conntrack: &crate::buckets::BucketTable<CtKey, CtEntry>,
        now_ns: u64,
    ) -> anyhow::Result<NatSweepReport> {
        let s = self.settings.get(&0, 0).context("NAT settings")?;
        let tracked =
            self.gateway_settings.get(&0, 0).context("settings")?.flags & FLAG_CONNTRACK != 0;
        let mut report = NatSweepReport {
            port_range: usize::from(s.port_max.saturating_sub(s.port_min)) + 1,
            ..Default::default()
        };
        let mut per_destination: HashMap<([u8; 16], [u8; 16], u16, u8), usize> = HashMap::new();
        for way in self.tables.entries(Direction::Forward) {
            let (key, target) = (way.key, way.value);
            let flow = if tracked {
                conntrack.get(&conntrack_key(&key))
            } else {
                None
            };
            let reverse = counterpart(&key, &target);
            // The reverse entry only if it is still this flow's (its port may be taken again
            // already, by a flow the kernel translated since).
            let back = self
                .tables
                .get(Direction::Reverse, &reverse)
                .filter(|back| back.addr == key.local && back.port == key.local_port);
            // Packets either way keep a translation alive (the LAN host's refresh the reverse
            // entry), as they do in the kernel.
            let mut seen = target;
            if let Some(back) = &back {
                seen.last_seen_ns = seen.last_seen_ns.max(back.last_seen_ns);
            }
            match verdict(&key, &seen, &s, tracked, flow.as_ref(), now_ns) {
                Some(why) => {
                    if back.is_some() {
                        self.tables.remove(
                            Direction::Reverse,
                            &reverse,
                            &key.local,
                            key.local_port,
                        )?;
                    }
                    if self
                        .tables
                        .remove(Direction::Forward, &key, &target.addr, target.port)?
                    {
                        match why {
                            Removal::FlowEnded => report.flow_ended += 1,
                            Removal::Transitory => report.transitory += 1,
                            Removal::Idle => report.idle += 1,
                        }
                    }
                }
                None => {
                    report.translations += 1;
                    *per_destination
                        .entry((target.addr, key.remote, key.remote_port, key.proto))
                        .or_default() += 1;
                }
            }
        }
        report.busiest_destination = per_destination.values().copied().max().unwrap_or(0);
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_common::conntrack::{ORIGIN_POLICY, STATE_TCP_CLOSED, STATE_TCP_SYN_SENT};

    const SEC: u64 = 1_000_000_000;

    fn tcp() -> (NatKey, NatTarget) {
        let mut local = [0u8; 16];
        local[..4].copy_from_slice(&[100, 64, 0, 7]);
        let mut remote = [0u8; 16];
        remote[..4].copy_from_slice(&[198, 18, 2, 10]);
        let mut lan = [0u8; 16];
        lan[..4].copy_from_slice(&[198, 18, 2, 1]);
        (
            NatKey {
                local,
                remote,
                local_port: 40000,
                remote_port: 80,
                proto: PROTO_TCP,
                family: 4,
                _pad: [0; 2],
            },
            NatTarget {
                addr: lan,
                port: 20123,
                replied: 0,
                _pad: [0; 5],
                last_seen_ns: 1000 * SEC,
            },
        )
    }

    fn entry(state: u8, origin: u8) -> CtEntry {
        CtEntry {
            state,
            origin,
            ..Default::default()
        }
    }

    #[test]
    fn translations_go_with_their_flows_and_by_tcp_phase() {
        let (k, t) = tcp();
        let s = NatSettings::default();
        let at = |secs: u64| 1000 * SEC + secs * SEC;
        let established = entry(STATE_TCP_ESTABLISHED, ORIGIN_POLICY);
        // A live established flow keeps its translation for 2 h 4 min of silence.
        assert_eq!(
            verdict(&k, &t, &s, true, Some(&established), at(7_000)),
            None
        );
        assert_eq!(
            verdict(&k, &t, &s, true, Some(&established), at(7_441)),
            Some(Removal::Idle)
        );
        // Never established (or closing): 4 minutes.
        let syn = entry(STATE_TCP_SYN_SENT, ORIGIN_POLICY);
        assert_eq!(verdict(&k, &t, &s, true, Some(&syn), at(239)), None);
        assert_eq!(
            verdict(&k, &t, &s, true, Some(&syn), at(241)),
            Some(Removal::Transitory)
        );
        assert_eq!(
            verdict(
                &k,
                &t,
                &s,
                true,
                Some(&entry(STATE_TCP_CLOSED, ORIGIN_POLICY)),
                at(300)
            ),
            Some(Removal::Transitory)
        );
        // Revoked: at once. Gone from conntrack: once idle for the transitory timeout (a live
        // flow whose entry a full table pushed out keeps its translation).
        assert_eq!(
            verdict(
                &k,
                &t,
                &s,
                true,
                Some(&entry(STATE_TCP_CLOSED, ORIGIN_REVOKED)),
                at(0)
            ),
            Some(Removal::FlowEnded)
        );
        assert_eq!(verdict(&k, &t, &s, true, None, at(10)), None);
        assert_eq!(
            verdict(&k, &t, &s, true, None, at(241)),
            Some(Removal::FlowEnded)
        );
        // Without conntrack only idleness counts, at the established timeout (the phase is unknown).
        assert_eq!(verdict(&k, &t, &s, false, None, at(300)), None);
        assert_eq!(
            verdict(&k, &t, &s, false, None, at(7_441)),
            Some(Removal::Idle)
        );
        // UDP: 2 minutes.
        let udp = NatKey { proto: 17, ..k };
        assert_eq!(
            verdict(&udp, &t, &s, true, Some(&entry(0, ORIGIN_POLICY)), at(119)),
            None
        );
        assert_eq!(
            verdict(&udp, &t, &s, true, Some(&entry(0, ORIGIN_POLICY)), at(121)),
            Some(Removal::Idle)
        );
    }

    #[test]
    fn keys_of_the_reply_and_of_the_flow() {
        let (k, t) = tcp();
        let r = counterpart(&k, &t);
        assert_eq!(
            (r.local, r.local_port, r.remote, r.remote_port),
            (t.addr, 20123, k.remote, 80)
        );
        // The flow as conntrack keys it: the lower endpoint first, the peer as initiator.
        let ct = conntrack_key(&k);
        assert_eq!(
            (
                ct.addr_a[..4].to_vec(),
                ct.port_a,
                ct.addr_b[..4].to_vec(),
                ct.port_b
            ),
            (vec![100, 64, 0, 7], 40000, vec![198, 18, 2, 10], 80)
        );
        // ICMP echo: both ports are the identifier, the reply's too; the peer asked.
        let echo = NatKey {
            proto: PROTO_ICMP,
            local_port: 7,
            remote_port: 7,
            ..k
        };
        let r = counterpart(&echo, &t);
        assert_eq!((r.local_port, r.remote_port), (20123, 20123));
        assert_eq!(
            conntrack_key(&echo).echo,
            gateway_common::conntrack::ECHO_REQUESTER_A
        );
    }
}
