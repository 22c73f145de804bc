//! Per-packet cost of the kernel program against the number of rules, by BPF_PROG_TEST_RUN with
//! repeat. One data plane per rule count, all loaded at once, measured round-robin per trial.

use aya::programs::{TestRun, TestRunOptions, TestRunResult};
use gateway_dataplane::{Dataplane, LimitsConfig, LoadOptions};
use gateway_policy::compile;
use gateway_testkit::packets::{Spec, TCP_SYN};
use serde::Serialize;

use crate::{rules, stats::Summary};

const XDP_PASS: u32 = 2;
const XDP_DROP: u32 = 1;

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct CostRow {
    pub rules: usize,
    pub path: String,
    pub ns_per_packet: Summary,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Cost {
    pub repeat: u32,
    pub rows: Vec<CostRow>,
}

/// The paths measured: the policy lookup for an accepted and an unmatched packet (stateless),
/// and an established flow (conntrack hit).
/// The floor is a non-IP frame: entry, counters and the test-run loop, no parsing past Ethernet.
const PATHS: [&str; 5] = [
    "policy accept (no conntrack)",
    "default deny (no conntrack)",
    "established (conntrack hit)",
    "floor: non-IP frame",
    "tunnel TC ingress: established (conntrack hit)",
];

pub fn limits_for(n: usize) -> LimitsConfig {
    let n = n as u32;
    LimitsConfig {
        acl_chunks: 4 * n + 1024,
        acl_verdicts: 4 * n + 1024,
        rules: n + 16,
        ..LimitsConfig::default()
    }
}

pub fn run(quick: bool) -> anyhow::Result<Cost> {
    let counts: &[usize] = &[10, 1_000, 10_000, 100_000];
    let trials = if quick { 3 } else { 7 };
    let repeat = if quick { 200_000 } else { 1_000_000 };
    let mut planes = Vec::new();
    for &n in counts {
        let syn = rules::synthetic(
            n,
            42 + n as u64,
            gateway_policy::Protocol::Tcp,
            "100.64.0.0/10".parse()?,
        );
        let limits = limits_for(n);
        let compiled = compile::compile(&syn.set, &limits.compile_limits())?;
        let mut dp = Dataplane::load(&LoadOptions {
            limits,
            ..Default::default()
        })?;
        dp.apply(&compiled)?;
        let (s, d, p) = syn.accepted;
        let accept = Spec::tcp(&s.to_string(), &d.to_string(), 40000, p, TCP_SYN).build();
        let (s, d, p) = syn.unmatched;
        let deny = Spec::tcp(&s.to_string(), &d.to_string(), 40000, p, TCP_SYN).build();
        eprintln!(
            "bench cost: {n} rules loaded ({} verdict entries, {} chunks)",
            compiled.stats.verdicts, compiled.stats.v4_chunks
        );
        planes.push((n, dp, accept, deny));
    }
    let mut arp = vec![0xffu8; 6];
    arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.resize(60, 0);
    let mut samples: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); PATHS.len()]; counts.len()];
    for trial in 0..trials {
        for (i, (n, dp, accept, deny)) in planes.iter_mut().enumerate() {
            for (path, sample) in samples[i].iter_mut().enumerate() {
                let (packet, conntrack, expect) = match path {
                    0 => (&accept[..], false, XDP_PASS),
                    1 => (&deny[..], false, XDP_DROP),
                    2 | 4 => (&accept[..], true, XDP_PASS),
                    _ => (&arp[..], false, XDP_PASS),
                };
                dp.set_conntrack(conntrack)?;
                let ns = if path == 4 {
                    time_tc(dp, packet, repeat)?
                } else {
                    time_xdp(dp, packet, repeat, expect)?
                };
                sample.push(ns);
                eprintln!(
                    "bench cost: trial {trial} rules {n} {}: {ns:.1} ns",
                    PATHS[path]
                );
            }
        }
    }
    let mut rows = Vec::new();
    for (i, &n) in counts.iter().enumerate() {
        for (path, s) in samples[i].iter().enumerate() {
            rows.push(CostRow {
                rules: n,
                path: PATHS[path].to_string(),
                ns_per_packet: Summary::of(s.clone()),
            });
        }
    }
    Ok(Cost { repeat, rows })
}

/// Average nanoseconds per run of the LAN XDP program over `repeat` runs; checks the verdict.
fn time_xdp(dp: &mut Dataplane, packet: &[u8], repeat: u32, expect: u32) -> anyhow::Result<f64> {
    time_run(dp.xdp_program()?, packet, repeat, expect)
}

/// Average nanoseconds per run of the tunnel's TC ingress program (Ethernet) over `repeat`
/// runs; checks that it lets the packet through (TC_ACT_OK).
fn time_tc(dp: &mut Dataplane, packet: &[u8], repeat: u32) -> anyhow::Result<f64> {
    let prog = dp.tc_program(gateway_common::maps::PROG_TC_TUNNEL_INGRESS_ETH)?;
    time_run(prog, packet, repeat, 0)
}

/// Runs `prog` `repeat` times on `packet`; checks its return value against `expect`.
fn time_run<P>(prog: &P, packet: &[u8], repeat: u32, expect: u32) -> anyhow::Result<f64>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let mut out = vec![0u8; packet.len() + 64];
    let r = prog.test_run(TestRunOptions {
        data_in: Some(packet),
        data_out: Some(&mut out),
        repeat,
        ..Default::default()
    })?;
    anyhow::ensure!(
        r.return_value == expect,
        "returned {} where {} was expected",
        r.return_value,
        expect
    );
    // The kernel reports the mean time of one repetition.
    Ok(r.duration.as_nanos() as f64)
}
