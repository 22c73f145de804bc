//! Scenario "nat": the routing peer's masquerade path. 64-byte UDP from the generator (the
//! tunnel side) to the sink's network (the masqueraded route), 1,000 rules, conntrack on, in the
//! stateful scenario's two rates: new translated flows per second (every frame a flow not seen
//! before) and established translated flows.
//!
//! The gateway (policy and forwarding in TC on the tunnel side, masquerade in TC on the LAN
//! side) against what NetBird installs (nftables sets behind conntrack, masquerade by mark, MSS
//! clamp, the kernel forwarding).

use crate::{
    contenders::{Contender, MASQUERADED},
    stateful::{Stateful, measure},
};

pub const CONTENDERS: [Contender; 3] = [
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
        "64-byte UDP from the generator (the tunnel side, d0) to the sink's network, the masqueraded route, counted at the sink; DUT on its own core; both with connection tracking. The gateway: policy, conntrack and forwarding (FIB lookup cached per CPU for a second, `bpf_redirect_neigh` to the FIB's next hop) in TC on d0, masquerade in TC on d1's egress (ports 1024–65535). nftables as NetBird installs it: the ACL as sets behind `ct state established,related accept`, new connections from d0 toward the route marked in prerouting and masqueraded in postrouting, MSS clamp. New flows: {} frames per trial, each a flow not seen before (the kernel's conntrack flushed, the gateway's tables fresh). Established: {} flows opened by a warm-up burst, then {} frames on them. Median (min–max).\n",
        s.new_flow_frames, s.established_flows, s.established_frames
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
        let new = g.new_flows_mpps.median / n.new_flows_mpps.median;
        let est = g.established_mpps.median / n.established_mpps.median;
        let _ = writeln!(
            md,
            "\nTargets: gateway ≥ 2x NetBird's nftables on established translated packets: {est:.2}x, {}; ≥ 3x on new translated connections: {new:.2}x, {}.",
            if est >= 2.0 { "met" } else { "NOT met" },
            if new >= 3.0 { "met" } else { "NOT met" }
        );
        if let Some(k) = find(Contender::KernelForward) {
            let _ = writeln!(
                md,
                "For scale: the kernel forwarding with no rules at all: {:.3} Mpps established.\n",
                k.established_mpps.median
            );
        }
    }
}
