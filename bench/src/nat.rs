//! Scenario "nat": the routing peer's masquerade path. 64-byte UDP from the generator (the
//! tunnel side) to the sink's network (the masqueraded route), 1,000 rules, conntrack on, in the
//! stateful scenario's two rates: new translated flows per second (every frame a flow not seen
//! before) and established translated flows.
//!
//! The gateway (policy, forwarding and masquerade in TC on the tunnel side) against what NetBird
//! installs (nftables sets behind conntrack, masquerade by mark, MSS clamp, the kernel
//! forwarding), with a no-op TC redirect as the ceiling of any data path in TC.

use crate::{
    contenders::{Contender, MASQUERADED},
    stateful::{Stateful, measure},
    stats::Summary,
};

pub const CONTENDERS: [Contender; 6] = [
    Contender::TcRedirect,
    Contender::TcTrackingRedirect,
    Contender::TcSlottedRedirect,
    Contender::KernelForward,
    Contender::GatewayMasquerade,
    Contender::NftMasquerade,
];

pub fn run(quick: bool) -> anyhow::Result<Stateful> {
    measure("bench nat", &CONTENDERS, MASQUERADED, 4_000, quick)
}

pub fn markdown(md: &mut String, s: &Stateful) {
    use std::fmt::Write as _;
    let _ = writeln!(md, "## Routed + masquerade: new translated flows per second and established translated flows ({} rules)
", s.rules);
    let _ = writeln!(
        md,
        "64-byte UDP from the generator (the tunnel side, d0) to the sink's network, the masqueraded route, counted at the sink; DUT on its own core; both with connection tracking. The tracking floor: the TC ceiling's redirect after the least any stateful translator does for a flow it has not seen (look it up; record it under its original tuple and under its translated one), in the kernel's LRU hash maps at the gateway's default capacities (conntrack's and NAT's), loaded afresh for each trial as the gateway's tables are; the slotted bound: the same in direct-mapped arrays of those capacities. The gateway: policy, conntrack, forwarding (FIB lookup cached per CPU for a second, `bpf_redirect_neigh` to the FIB's next hop) and masquerade (ports 1024–65535) in TC on d0; its masquerade program on d1's egress finds the packets translated already. The TC ceiling: a TC program on d0 that redirects every packet to the sink's address on d1 (`bpf_redirect_neigh`), nothing else. nftables as NetBird installs it: the ACL as sets behind `ct state established,related accept`, new connections from d0 toward the route marked in prerouting and masqueraded in postrouting, MSS clamp. New flows: {} frames per trial, each a flow not seen before (the kernel's conntrack flushed, the gateway's tables fresh). Established: {} flows opened by a warm-up burst, then {} frames on them. Median (min–max). {}\n",
        s.new_flow_frames,
        s.established_flows,
        s.established_frames,
        s.method.describe()
    );
    let _ = writeln!(
        md,
        "| contender | new flows (M/s) | loss | established (Mpps) | loss |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    for r in &s.rows {
        if let Some(e) = &r.error {
            let _ = writeln!(md, "| {} | not measured: {e} | | | |", r.label);
            continue;
        }
        let _ = writeln!(
            md,
            "| {} | {:.3} ({:.3}–{:.3}) | {:.1}% | {:.3} ({:.3}–{:.3}) | {:.1}% |",
            r.label,
            r.new_flows_mpps.median,
            r.new_flows_mpps.min,
            r.new_flows_mpps.max,
            r.new_flows_loss.median * 100.0,
            r.established_mpps.median,
            r.established_mpps.min,
            r.established_mpps.max,
            r.established_loss.median * 100.0
        );
    }
    let find = |c: Contender| {
        s.rows
            .iter()
            .find(|r| r.contender == c && r.error.is_none())
    };
    if let (Some(g), Some(n)) = (
        find(Contender::GatewayMasquerade),
        find(Contender::NftMasquerade),
    ) {
        // Judged both by the columns' medians and within each trial.
        let judged = |g: &Summary, n: &Summary, target: f64| {
            let (by_medians, paired) = (g.median / n.median, Summary::paired(&g.trials, &n.trials));
            format!(
                "{by_medians:.2}x by medians, {:.2}x ({:.2}–{:.2}) within each trial, {}",
                paired.median,
                paired.min,
                paired.max,
                if by_medians >= target && paired.median >= target {
                    "met"
                } else {
                    "NOT met"
                }
            )
        };
        let _ = writeln!(
            md,
            "\nTargets: gateway ≥ 2x NetBird's nftables on established translated packets: {}; ≥ 3x on new translated connections: {}.",
            judged(&g.established_mpps, &n.established_mpps, 2.0),
            judged(&g.new_flows_mpps, &n.new_flows_mpps, 3.0),
        );
        crate::stateful::overload_line(md, g, n, "NetBird's nftables");
        if let Some(t) = find(Contender::TcRedirect) {
            // Within each trial too: this host runs at two speeds, and a ceiling trial at the
            // slow one beside a gateway trial at the fast one moves the medians' ratio.
            let _ = writeln!(
                md,
                "What bounds it: a TC program that does nothing but redirect (the same hook and helper as the gateway's forwarding, no parse, no lookup) ÷ nftables: {:.2}x established, {:.2}x new flows: the most a data path in TC that reads and writes nothing reaches here. The gateway against it: {} on established flows, {} on new flows; what it lacks is its own work per packet (policy, connection tracking and translation tables, the rewrite; an established flow's packets mostly take the tunnel's per-flow shortcut, which skips all but the rewrite).",
                t.established_mpps.median / n.established_mpps.median,
                t.new_flows_mpps.median / n.new_flows_mpps.median,
                g.established_mpps.share_of(&t.established_mpps),
                g.new_flows_mpps.share_of(&t.new_flows_mpps),
            );
            for (what, base, gw, target) in [
                (
                    "established, 2x nftables",
                    t.established_mpps.median,
                    g.established_mpps.median,
                    2.0 * n.established_mpps.median,
                ),
                (
                    "new flows, 3x nftables",
                    t.new_flows_mpps.median,
                    g.new_flows_mpps.median,
                    3.0 * n.new_flows_mpps.median,
                ),
            ] {
                let _ = writeln!(
                    md,
                    "- {what}: {}.",
                    crate::stats::per_packet_budget(
                        "the TC ceiling",
                        base,
                        "the gateway",
                        gw,
                        target
                    )
                );
            }
            if let Some(f) = find(Contender::TcTrackingRedirect) {
                let by_medians = f.new_flows_mpps.median / n.new_flows_mpps.median;
                let paired = Summary::paired(&f.new_flows_mpps.trials, &n.new_flows_mpps.trials);
                let _ = writeln!(
                    md,
                    "- the floor of any translator that keeps its flows in the kernel's hash maps: the same redirect after looking a new flow up and recording it under its original and its translated tuple (one lookup, two inserts, LRU hash maps at the gateway's default capacities, 16-byte keys; no policy, clock or rewrite) ÷ nftables: {by_medians:.2}x by medians, {:.2}x ({:.2}–{:.2}) within each trial on new flows, {:.2}x established; against the TC ceiling {} on new flows. {} The gateway against this floor: {} on new flows.",
                    paired.median,
                    paired.min,
                    paired.max,
                    f.established_mpps.median / n.established_mpps.median,
                    f.new_flows_mpps.share_of(&t.new_flows_mpps),
                    if by_medians < 3.0 && paired.median < 3.0 {
                        "Below 3x: no data path that records new flows in these maps reaches the new-flow target on this host, whatever else it does or leaves out."
                    } else {
                        "At 3x or above: the tables alone do not rule the target out here."
                    },
                    g.new_flows_mpps.share_of(&f.new_flows_mpps),
                );
            }
            if let Some(a) = find(Contender::TcSlottedRedirect) {
                let paired = Summary::paired(&a.new_flows_mpps.trials, &n.new_flows_mpps.trials);
                let _ = writeln!(
                    md,
                    "- the bound of a flow store outside the kernel's hash maps: the same lookup and two records in direct-mapped arrays of the same capacities (a flow's slot is its tuple's hash, a new flow overwrites whatever held it; 32-byte slots; without the synchronisation between CPUs a real store needs, so an upper bound) ÷ nftables: {:.2}x by medians, {:.2}x ({:.2}–{:.2}) within each trial on new flows, {:.2}x established; against the TC ceiling {} on new flows.",
                    a.new_flows_mpps.median / n.new_flows_mpps.median,
                    paired.median,
                    paired.min,
                    paired.max,
                    a.established_mpps.median / n.established_mpps.median,
                    a.new_flows_mpps.share_of(&t.new_flows_mpps),
                );
            }
            let _ = writeln!(md);
        }
        if let Some(k) = find(Contender::KernelForward) {
            let _ = writeln!(
                md,
                "For scale: the kernel forwarding with no rules at all: {:.3} Mpps established.\n",
                k.established_mpps.median
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{generator::RateMethod, stateful::StatefulRow};

    fn row(c: Contender, new: &[f64], established: &[f64]) -> StatefulRow {
        let zeros = Summary::of(vec![0.0; new.len()]);
        StatefulRow {
            contender: c,
            label: c.label().to_string(),
            new_flows_mpps: Summary::of(new.to_vec()),
            new_flows_loss: zeros.clone(),
            established_mpps: Summary::of(established.to_vec()),
            established_loss: zeros,
            new_flows_overloaded_mpps: None,
            established_overloaded_mpps: None,
            error: None,
        }
    }

    fn report(floor_new: [f64; 2]) -> String {
        let s = Stateful {
            method: RateMethod::CURRENT,
            rules: 1000,
            new_flow_frames: 1,
            established_frames: 1,
            established_flows: 1,
            rows: vec![
                row(Contender::TcRedirect, &[1.2, 1.2], &[1.4, 1.4]),
                row(Contender::TcTrackingRedirect, &floor_new, &[1.2, 1.2]),
                row(Contender::GatewayMasquerade, &[0.4, 0.4], &[1.0, 1.0]),
                row(Contender::NftMasquerade, &[0.25, 0.25], &[0.4, 0.4]),
            ],
        };
        let mut md = String::new();
        markdown(&mut md, &s);
        md
    }

    #[test]
    fn the_slotted_bound_has_the_gateways_default_capacities() {
        // The slotted bound's arrays have these many slots and index them by the hash's low
        // bits (bench/ebpf `slot_index`).
        use gateway_common::maps::{DEFAULT_CONNTRACK_ENTRIES, DEFAULT_NAT_ENTRIES};
        assert!(DEFAULT_CONNTRACK_ENTRIES.is_power_of_two());
        assert!(DEFAULT_NAT_ENTRIES.is_power_of_two());
    }

    #[test]
    fn the_floor_says_whether_3x_is_within_reach_of_the_kernels_hash_maps() {
        // 0.7 / 0.25 = 2.8x in every trial: the floor itself misses 3x.
        let below = report([0.7, 0.7]);
        assert!(
            below.contains(
                "÷ nftables: 2.80x by medians, 2.80x (2.80–2.80) within each trial on new flows"
            ),
            "{below}"
        );
        assert!(below.contains("Below 3x: no data path"), "{below}");
        assert!(
            below.contains("The gateway against this floor: 57% by medians"),
            "{below}"
        );
        // 0.8 / 0.25 = 3.2x: the tables alone do not rule it out.
        let above = report([0.8, 0.8]);
        assert!(above.contains("At 3x or above"), "{above}");
        assert!(!above.contains("Below 3x"), "{above}");
    }
}
