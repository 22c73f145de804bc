//! `cargo xtask bench [--quick] [--scenario NAME]`: measures, side by side and alternating, and
//! writes bench/results/<timestamp>.json and bench/RESULTS.md.

mod alternate;
mod apply;
mod bpf_stats;
mod contenders;
mod cost;
mod generator;
mod interrupt;
mod management;
mod nat;
mod plots;
mod pps;
mod profiling;
mod relay;
mod relay_pps;
mod report;
mod restart;
mod rules;
mod stateful;
mod stats;
mod swap;
mod tcp;
mod topo;
mod underlay;
mod wireguard;

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// A smoke run: fewer trials and repetitions (under two minutes).
    #[arg(long)]
    quick: bool,
    /// Run only these scenarios (comma-separated): cost, apply, pps, tcp, stateful, nat, swap, restart, management, wireguard, relay, relay-pps, underlay.
    #[arg(long)]
    scenario: Option<String>,
    /// Measure nothing: write RESULTS.md (and plots) again from a run's JSON in results/.
    #[arg(long, value_name = "JSON")]
    render: Option<std::path::PathBuf>,
    /// Profiling: measure only the contenders whose label contains one of these
    /// `|`-separated strings (the run is not a result: give --out).
    #[arg(long, value_name = "LABELS")]
    only: Option<String>,
    /// Profiling: frames per trial of the packet-rate scenarios (pps, relay-pps, and both
    /// phases of stateful and nat), to hold a load for `perf` (give --out).
    #[arg(long)]
    frames: Option<u32>,
    /// Profiling: offer the packet-rate scenarios' load at this many frames per second, one
    /// paced run per measurement in place of the search for the maximum forwarding rate, so
    /// that `perf` sees the DUT's core below its limit (give --out).
    #[arg(long, value_name = "PPS")]
    pace: Option<f64>,
    /// Where results go (default: bench/ in the source tree).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR")))]
    out: std::path::PathBuf,
}

const SCENARIOS: [&str; 13] = [
    "cost",
    "apply",
    "pps",
    "tcp",
    "stateful",
    "nat",
    "swap",
    "restart",
    "management",
    "wireguard",
    "underlay",
    "relay",
    "relay-pps",
];

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(json) = &args.render {
        let run: report::Run = serde_json::from_str(&std::fs::read_to_string(json)?)?;
        return run.write(&args.out);
    }
    if (args.only.is_some() || args.frames.is_some() || args.pace.is_some())
        && args.out == std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
    {
        anyhow::bail!("--only, --frames and --pace make a profiling run, not a result: give --out");
    }
    if let Some(pace) = args.pace {
        anyhow::ensure!(
            pace.is_finite() && pace >= 1.0,
            "--pace {pace}: give the offered load in frames per second (at least 1)"
        );
    }
    interrupt::install()?;
    profiling::set(args.only.as_deref(), args.frames, args.pace);
    let chosen: Option<Vec<&str>> = args
        .scenario
        .as_deref()
        .map(|s| s.split(',').map(str::trim).collect());
    if let Some(list) = &chosen {
        for s in list {
            anyhow::ensure!(
                SCENARIOS.contains(s),
                "unknown scenario {s:?} ({})",
                SCENARIOS.join(", ")
            );
        }
    }
    let wants = |name: &str| chosen.as_ref().is_none_or(|list| list.contains(&name));
    let _stats_off = bpf_stats::StatsOff::ensure();
    let mut run = report::Run::new(args.quick)?;
    if wants("cost") {
        run.cost = Some(cost::run(args.quick)?);
    }
    if wants("apply") {
        run.apply = Some(apply::run(args.quick)?);
    }
    if wants("pps") {
        run.pps = Some(pps::run(args.quick)?);
    }
    if wants("tcp") {
        run.tcp = Some(tcp::run(args.quick)?);
    }
    if wants("stateful") {
        run.stateful = Some(stateful::run(args.quick)?);
    }
    if wants("nat") {
        run.nat = Some(nat::run(args.quick)?);
    }
    if wants("swap") {
        run.swap = Some(swap::run(args.quick)?);
    }
    if wants("restart") {
        run.restart = Some(restart::run(args.quick)?);
    }
    if wants("relay") {
        run.relay = Some(relay::run(args.quick)?);
    }
    if wants("wireguard") {
        run.wireguard = Some(wireguard::run(args.quick)?);
    }
    if wants("relay-pps") {
        run.relay_pps = Some(relay_pps::run(args.quick)?);
    }
    if wants("underlay") {
        run.underlay = Some(underlay::run(args.quick)?);
    }
    if wants("management") {
        run.management = Some(management::run(args.quick)?);
    }
    profiling::ensure_matched()?;
    run.write(&args.out)?;
    Ok(())
}
