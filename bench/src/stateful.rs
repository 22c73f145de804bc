//! Scenario "stateful": connection tracking on. Two rates per contender, 64-byte UDP through
//! the DUT with 1,000 rules:
//! - new flows per second: every frame opens a flow (source ports cycle through 55,000 values
//!   for each of 64 sources, so no frame of a run repeats an earlier flow);
//! - established flows: 4,096 flows, opened by a warm-up burst, then measured.
//!
//! The gateway (its own conntrack in a bucket table, XDP forwarding) against nftables with sets
//! behind `ct state established,related accept` (the kernel's conntrack, flushed before each
//! new-flow trial).

use gateway_policy::Protocol;
use serde::{Deserialize, Serialize};

use crate::{
    alternate::alternate,
    contenders::{self, Contender},
    generator::{Generator, Measurement, RateMethod},
    pps::FRAME_BYTES,
    rules,
    stats::Summary,
    topo::Topo,
};

pub const RULES: usize = 1_000;
const CONTENDERS: [Contender; 2] = [Contender::Gateway, Contender::NftSets];
const NEW_FLOW_SPORTS: u32 = 55_000;
const ESTABLISHED_SPORTS: u32 = 64;

#[derive(Debug, Serialize, Deserialize)]
pub struct StatefulRow {
    pub contender: Contender,
    pub label: String,
    /// Every frame a new flow: Mpps = million new flows per second, counted at the sink.
    pub new_flows_mpps: Summary,
    pub new_flows_loss: Summary,
    pub established_mpps: Summary,
    pub established_loss: Summary,
    /// The same trials at full overload alone (absent from runs before maximum forwarding
    /// rates).
    #[serde(default)]
    pub new_flows_overloaded_mpps: Option<Summary>,
    #[serde(default)]
    pub established_overloaded_mpps: Option<Summary>,
    pub error: Option<String>,
}

impl StatefulRow {
    /// The (new flows, established) medians at full overload, where the run kept them.
    pub fn overloaded(&self) -> Option<(f64, f64)> {
        Some((
            self.new_flows_overloaded_mpps.as_ref()?.median,
            self.established_overloaded_mpps.as_ref()?.median,
        ))
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Stateful {
    /// How the rates were measured (its fields sit at this level in the JSON).
    #[serde(flatten)]
    pub method: RateMethod,
    pub rules: usize,
    pub new_flow_frames: u32,
    pub established_frames: u32,
    pub established_flows: u32,
    pub rows: Vec<StatefulRow>,
}

fn trial(
    c: Contender,
    topo: &Topo,
    generator: &mut Generator,
    syn: &rules::Synthetic,
    flows: &[(std::net::Ipv4Addr, u16)],
    new_frames: u32,
    est_frames: u32,
) -> anyhow::Result<(Measurement, Measurement)> {
    // New flows: a fresh install (the gateway's tables start empty), the kernel's table flushed.
    generator.set_flows(flows, NEW_FLOW_SPORTS)?;
    let installed = contenders::install(c, topo, Some(generator), Some(syn), true)?;
    let _ = topo.dut_sh("conntrack -F 2>/dev/null");
    topo.dedicate_dut_core()?;
    let new = generator.measure(topo, new_frames);
    // Established: open the flows, then measure packets on them.
    generator.set_flows(flows, ESTABLISHED_SPORTS)?;
    let est = new.and_then(|new| {
        generator.send(topo, flows.len() as u32 * ESTABLISHED_SPORTS * 2)?;
        std::thread::sleep(std::time::Duration::from_millis(200));
        Ok((new, generator.measure(topo, est_frames)?))
    });
    contenders::remove(installed, topo, Some(generator))?;
    est
}

pub fn run(quick: bool) -> anyhow::Result<Stateful> {
    measure("bench stateful", &CONTENDERS, "198.19.0.0/24", 3_000, quick)
}

/// Both rates for each contender, alternating, with 1,000 UDP rules toward `destination` (the
/// stateful and the masquerade scenarios share this).
pub fn measure(
    tag: &str,
    contenders: &[Contender],
    destination: &str,
    seed: u64,
    quick: bool,
) -> anyhow::Result<Stateful> {
    let topo = Topo::create()?;
    let mut generator = Generator::new(&topo, FRAME_BYTES)?;
    let syn = rules::synthetic(RULES, seed, Protocol::Udp, destination.parse()?);
    let flows = rules::accepted_flows(&syn, 64);
    let trials = if quick { 2 } else { 5 };
    // Long enough that the start of a trial (the DUT's NAPI thread waking, cold caches) does not
    // set the rate: with 200,000 frames, kernel forwarding, which keeps no state, measured 40%
    // fewer "new flows" per second than established packets; from 1,000,000 on, the same.
    let new_frames = crate::profiling::frames(if quick { 500_000 } else { 1_000_000 });
    let est_frames = crate::profiling::frames(if quick { 400_000 } else { 2_000_000 });
    let outcomes = alternate(
        tag,
        contenders,
        |c| c.label().to_string(),
        trials,
        |c| {
            trial(
                c,
                &topo,
                &mut generator,
                &syn,
                &flows,
                new_frames,
                est_frames,
            )
        },
        |(new, est)| {
            format!(
                "new flows {:.3} M/s (loss {:.1}%), established {:.3} Mpps (loss {:.1}%)",
                new.pps() / 1e6,
                new.loss() * 100.0,
                est.pps() / 1e6,
                est.loss() * 100.0
            )
        },
    );
    let rows = outcomes
        .into_iter()
        .zip(contenders.iter().copied())
        .map(|(o, c)| {
            let summary = |f: &dyn Fn(&(Measurement, Measurement)) -> f64| {
                Summary::of_or_zero(o.samples.iter().map(f).collect())
            };
            StatefulRow {
                contender: c,
                label: c.label().to_string(),
                new_flows_mpps: summary(&|m| m.0.pps() / 1e6),
                new_flows_loss: summary(&|m| m.0.loss()),
                established_mpps: summary(&|m| m.1.pps() / 1e6),
                established_loss: summary(&|m| m.1.loss()),
                new_flows_overloaded_mpps: Some(summary(&|m| m.0.overloaded_pps() / 1e6)),
                established_overloaded_mpps: Some(summary(&|m| m.1.overloaded_pps() / 1e6)),
                error: o.error,
            }
        })
        .collect();
    Ok(Stateful {
        method: RateMethod::CURRENT,
        rules: RULES,
        new_flow_frames: new_frames,
        established_frames: est_frames,
        established_flows: flows.len() as u32 * ESTABLISHED_SPORTS,
        rows,
    })
}

pub fn markdown(md: &mut String, s: &Stateful) {
    use std::fmt::Write as _;
    let _ = writeln!(
        md,
        "## Stateful: new flows per second and established flows ({} rules, conntrack on)\n",
        s.rules
    );
    let _ = writeln!(
        md,
        "64-byte UDP from the in-kernel generator, counted at the sink, DUT on its own core. New flows: {} frames per trial, every one a flow not seen before (the kernel's conntrack table is flushed and the gateway's starts empty). Established: {} flows opened by a warm-up burst, then {} frames on them. nftables: `ct state established,related accept` ahead of the set lookup. Median (min–max) over trials. {}\n",
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
            let _ = writeln!(
                md,
                "| {} | not measured: {} | | | |",
                r.label,
                e.lines().next().unwrap_or("")
            );
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
    if let (Some(g), Some(n)) = (find(Contender::Gateway), find(Contender::NftSets)) {
        let _ = writeln!(
            md,
            "\nGateway ÷ nftables: {:.1}x on new flows, {:.1}x on established flows.\n",
            g.new_flows_mpps.median / n.new_flows_mpps.median,
            g.established_mpps.median / n.established_mpps.median
        );
        overload_line(md, g, n, "nftables");
    }
}

/// The gateway against `other` in the same trials at full overload alone, where kept.
pub fn overload_line(md: &mut String, g: &StatefulRow, other: &StatefulRow, name: &str) {
    use std::fmt::Write as _;
    if let (Some((gn, ge)), Some((on, oe))) = (g.overloaded(), other.overloaded()) {
        let _ = writeln!(
            md,
            "The same trials at full overload alone, by medians: gateway ÷ {name} {:.2}x on new flows, {:.2}x on established flows.\n",
            gn / on,
            ge / oe
        );
    }
}
