//! Scenario "swap": a 10,000-rule policy change applied while traffic flows through the gateway.
//!
//! The generator sends the flows of rules that both policies keep, at a steady rate below the
//! gateway's capacity, in batches from its own thread; halfway through, the main thread applies
//! the next policy (10,000 different rules plus the kept ones, and for B and C a probe rule).
//! Every frame sent must arrive at the sink. The new policy is effective when `apply` returns
//! (the selector flip is its last step); a probe packet that B and C accept and A does not is
//! run through the program right then to confirm it. Trials cycle A→B→C→A: the slot an apply
//! writes holds the policy from two applies before, never the one it gets (the data plane writes
//! only entries that differ, so alternating two policies would write nothing after the second
//! swap). A trial without a swap shows the rate itself loses nothing.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use aya::programs::{TestRun as _, TestRunOptions};
use gateway::config::LanAttach;
use gateway_dataplane::{Dataplane, LoadOptions};
use gateway_policy::{
    Action, DEFAULT_PRIORITY, Group, GroupRef, Policy, PolicySet, PortRange, PortSet, Protocol,
    compile,
};
use gateway_testkit::packets::Spec;
use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::{
    cost::limits_for,
    generator::Generator,
    rules::{self, Synthetic},
    stats::Summary,
    topo::Topo,
};

const XDP_DROP: u32 = 1;
const RULES: usize = 10_000;
/// Flows both policies accept.
const KEPT_FLOWS: usize = 64;
const PROBE_SRC: &str = "203.0.113.77";
const PROBE_PORT: u16 = 4999;

#[derive(Debug, Serialize, Deserialize)]
pub struct SwapTrial {
    pub swap: bool,
    pub sent: u64,
    /// Frames the gateway's LAN program judged (accepted or dropped).
    #[serde(default)]
    pub judged: u64,
    pub received: u64,
    pub apply_ms: f64,
    /// Right after apply returned, the probe got the new policy's verdict.
    pub probe_as_new_policy: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Swap {
    pub rules: usize,
    pub kept_flows: usize,
    pub rate_pps: f64,
    pub seconds: f64,
    pub apply_ms: Summary,
    /// Frames the gateway took in but did not deliver, over the trials with a swap.
    pub lost_during_swaps: u64,
    pub lost_without_swap: u64,
    /// Frames the generator sent that never reached the gateway (the harness's own loss).
    #[serde(default)]
    pub lost_before_gateway: u64,
    pub trials: Vec<SwapTrial>,
}

/// `others`' rules plus accept rules (decided first) for the flows of `kept` and, if asked, the
/// probe rule: every variant keeps the same flows and differs in everything else.
fn variant(kept: &Synthetic, others: &Synthetic, probe: bool) -> PolicySet {
    let mut set = others.set.clone();
    let flows = rules::accepted_flows(kept, KEPT_FLOWS);
    let add = |set: &mut PolicySet, name: String, src: Ipv4Net, port: u16| {
        set.groups.push(Group {
            name: format!("{name}-src"),
            members: vec![IpNet::V4(src)],
        });
        set.policies.push(Policy {
            name,
            enabled: true,
            description: String::new(),
            source_groups: vec![GroupRef::Named(
                set.groups.last().expect("pushed").name.clone(),
            )],
            destination_groups: vec![GroupRef::Named("dst".into())],
            bidirectional: false,
            action: Action::Accept,
            protocol: Protocol::Udp,
            ports: PortSet::from_ranges(vec![PortRange {
                start: port,
                end: port,
            }]),
            destination_ips: vec![],
            exceptions: vec![],
            priority: DEFAULT_PRIORITY - 1,
        });
    };
    for (i, (src, port)) in flows.iter().enumerate() {
        add(
            &mut set,
            format!("kept{i}"),
            Ipv4Net::new(*src, 32).expect("/32"),
            *port,
        );
    }
    if probe {
        add(
            &mut set,
            "probe".into(),
            format!("{PROBE_SRC}/32").parse().expect("constant"),
            PROBE_PORT,
        );
    }
    set
}

/// Frames the LAN program judged so far: accepted by the policy or dropped. (Frames it only let
/// pass, such as the sink side's IPv6 neighbour discovery, are not the generator's.)
fn judged(dp: &Dataplane) -> anyhow::Result<u64> {
    use gateway_common::stats::{HOOK_LAN, reason, stats_index};
    let c = dp.verdict_counters()?;
    let policed = |r: &u32| {
        *r == reason::ACCEPT_POLICY
            || *r == reason::ACCEPT_ESTABLISHED
            || *r >= reason::FIRST_DROP_REASON
    };
    Ok((0..reason::SLOTS)
        .filter(policed)
        .map(|r| c[stats_index(HOOK_LAN, r) as usize].packets)
        .sum())
}

fn probe_verdict(dp: &mut Dataplane, probe: &[u8]) -> anyhow::Result<u32> {
    let prog = dp.xdp_program()?;
    let mut out = vec![0u8; probe.len() + 64];
    Ok(prog
        .test_run(TestRunOptions {
            data_in: Some(probe),
            data_out: Some(&mut out),
            repeat: 1,
            ..Default::default()
        })?
        .return_value)
}

/// Sends `total` frames at about `rate` per second in batches; returns frames sent.
pub(crate) fn paced_send(
    generator: &mut Generator,
    topo: &Topo,
    total: u64,
    rate: f64,
) -> anyhow::Result<u64> {
    const BATCH: u32 = 2_000;
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        generator.send(topo, BATCH)?;
        sent += BATCH as u64;
        let due = Duration::from_secs_f64(sent as f64 / rate);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    Ok(sent)
}

pub fn run(quick: bool) -> anyhow::Result<Swap> {
    let topo = Topo::create()?;
    let mut generator = Generator::new(&topo, crate::pps::FRAME_BYTES)?;
    let dst: Ipv4Net = "198.19.0.0/24".parse()?;
    let a = rules::synthetic(RULES, 501, Protocol::Udp, dst);
    let b_others = rules::synthetic(RULES, 502, Protocol::Udp, dst);
    let c_others = rules::synthetic(RULES, 503, Protocol::Udp, dst);
    let flows = rules::accepted_flows(&a, KEPT_FLOWS);
    let sets = [
        variant(&a, &a, false),
        variant(&a, &b_others, true),
        variant(&a, &c_others, true),
    ];
    let limits = limits_for(2 * RULES + KEPT_FLOWS + 1);
    let compiled: Vec<compile::Compiled> = sets
        .iter()
        .map(|s| compile::compile(s, &limits.compile_limits()))
        .collect::<Result<_, _>>()?;
    let probe = Spec::udp(
        PROBE_SRC,
        &Ipv4Addr::from(dst.network().to_bits() | 1).to_string(),
        40000,
        PROBE_PORT,
    )
    .build();

    let mut dp = Dataplane::load(&LoadOptions {
        limits,
        conntrack: false,
        overlay_v4: "198.19.0.0/16".parse()?,
        ..Default::default()
    })?;
    dp.apply(&compiled[0])?;
    topo.dut.run_scoped(|| -> anyhow::Result<()> {
        dp.attach_lan("d0", LanAttach::XdpNative)?;
        dp.attach_lan("d1", LanAttach::XdpNative)?;
        dp.enable_xdp_forward(&["d0".to_string(), "d1".to_string()])
    })??;
    generator.set_flows(&flows, 64)?;

    let rate = if quick { 150_000.0 } else { 200_000.0 };
    let seconds = if quick { 1.0 } else { 2.0 };
    let total = (rate * seconds) as u64;
    let swaps = if quick { 2 } else { 6 };
    let mut trials = Vec::new();
    let mut current = 0usize;
    // Trial 0 has no swap: the rate itself must lose nothing.
    for t in 0..=swaps {
        let swap = t > 0;
        let before = generator.sink_packets()?;
        let judged_before = judged(&dp)?;
        let (sent, apply_ms, accepted) =
            std::thread::scope(|s| -> anyhow::Result<(u64, f64, bool)> {
                let sender = s.spawn(|| paced_send(&mut generator, &topo, total, rate));
                let mut apply_ms = 0.0;
                let mut accepted = false;
                if swap {
                    std::thread::sleep(Duration::from_secs_f64(seconds / 2.0));
                    let next = (current + 1) % sets.len();
                    anyhow::ensure!(
                        (probe_verdict(&mut dp, &probe)? == XDP_DROP) == (current == 0),
                        "probe verdict before the swap"
                    );
                    let t0 = Instant::now();
                    dp.apply(&compiled[next])?;
                    apply_ms = t0.elapsed().as_secs_f64() * 1e3;
                    accepted = (probe_verdict(&mut dp, &probe)? != XDP_DROP) == (next != 0);
                    current = next;
                }
                let sent = sender
                    .join()
                    .map_err(|_| anyhow::anyhow!("sender thread panicked"))??;
                Ok((sent, apply_ms, accepted))
            })?;
        std::thread::sleep(Duration::from_millis(300));
        let received = generator.sink_packets()? - before;
        // The probe runs through the program too: one judged frame per probe run (two a swap).
        let probes = if swap { 2 } else { 0 };
        let judged = judged(&dp)? - judged_before - probes;
        eprintln!(
            "bench swap: trial {t} ({}): sent {sent}, judged {judged}, received {received}, apply {apply_ms:.1} ms",
            if swap { "swap" } else { "no swap" }
        );
        trials.push(SwapTrial {
            swap,
            sent,
            judged,
            received,
            apply_ms,
            probe_as_new_policy: accepted,
        });
    }
    let _ = topo.dut.run_scoped(|| dp.detach_all());
    let lost = |swap: bool| {
        trials
            .iter()
            .filter(|t| t.swap == swap)
            .map(|t| t.judged.saturating_sub(t.received))
            .sum()
    };
    Ok(Swap {
        rules: RULES,
        kept_flows: flows.len(),
        rate_pps: rate,
        seconds,
        apply_ms: Summary::of(
            trials
                .iter()
                .filter(|t| t.swap)
                .map(|t| t.apply_ms)
                .collect(),
        ),
        lost_during_swaps: lost(true),
        lost_without_swap: lost(false),
        lost_before_gateway: trials.iter().map(|t| t.sent.saturating_sub(t.judged)).sum(),
        trials,
    })
}

pub fn markdown(md: &mut String, s: &Swap) {
    use std::fmt::Write as _;
    let swaps = s.trials.iter().filter(|t| t.swap).count();
    let sent: u64 = s.trials.iter().filter(|t| t.swap).map(|t| t.sent).sum();
    let _ = writeln!(
        md,
        "## Policy swap under load ({} rules changed)\n",
        s.rules
    );
    let _ = writeln!(
        md,
        "The generator sends {} flows that every policy accepts at {:.0} kpps for {:.0} s per trial (64-byte UDP, stateless gateway with XDP forwarding); halfway through, the next policy is applied: {} different rules plus the kept ones (and a probe rule in B and C), cycling A→B→C→A so that no apply finds its slot already holding the policy it writes. Counted at the sink.\n",
        s.kept_flows,
        s.rate_pps / 1e3,
        s.seconds,
        s.rules
    );
    let _ = writeln!(md, "| measure | value |");
    let _ = writeln!(md, "|---|---:|");
    let _ = writeln!(
        md,
        "| apply (compile done; write slot + flip), median (min–max) | {:.1} ms ({:.1}–{:.1}) |",
        s.apply_ms.median, s.apply_ms.min, s.apply_ms.max
    );
    let _ = writeln!(
        md,
        "| probe (accepted by B and C, not A) got the new policy's verdict right after apply returned | {}/{swaps} swaps |",
        s.trials
            .iter()
            .filter(|t| t.swap && t.probe_as_new_policy)
            .count()
    );
    let _ = writeln!(
        md,
        "| frames of kept flows the gateway took in but did not deliver, during {swaps} swaps ({sent} sent) | {} |",
        s.lost_during_swaps
    );
    let _ = writeln!(
        md,
        "| the same in the trial without a swap | {} |",
        s.lost_without_swap
    );
    let _ = writeln!(
        md,
        "| frames the harness lost before the gateway (generator XDP_TX into the veth), all trials | {} |",
        s.lost_before_gateway
    );
    let _ = writeln!(
        md,
        "\nTarget: zero packets of allowed flows lost during the swap: {}. The new policy is in force when apply returns; time until effective = the apply time above.\n",
        if s.lost_during_swaps == 0 {
            "met"
        } else {
            "NOT met"
        }
    );
}
