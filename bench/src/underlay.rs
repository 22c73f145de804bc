//! Scenario "underlay": what a handshake-initiation flood at the WireGuard port does to an
//! established tunnel, with the gateway's XDP underlay filter and without.
//!
//! The routing peer is the gateway terminating WireGuard itself (boringtun, in its process),
//! as in scenario "wireguard". While one iperf3 TCP stream runs from the peer through the tunnel
//! to the LAN host, a sender on the peer's underlay link sends handshake initiations (148 bytes,
//! type 1, invalid MACs, as a flood would) at a fixed rate to the gateway's WireGuard port.
//! Without the filter every one climbs to boringtun's socket, which reads and rejects it; with it,
//! XDP passes well-formed messages only and rate-limits initiations per source and in total.
//! The same run without a flood is the reference.

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::bail;
use gateway_testkit::{
    iperf::{self, Run, Transfer},
    wireguard::{WG_LAN_HOST, WG_PORT},
};
use serde::{Deserialize, Serialize};

use crate::{alternate::alternate, contenders::Contender, stats::Summary, wireguard};

pub const CONTENDERS: [Contender; 4] = [
    Contender::UnderlayQuiet,
    Contender::UnderlayFloodFiltered,
    Contender::UnderlayFloodFilteredTc,
    Contender::UnderlayFloodUnfiltered,
];

/// Initiations per second the flood offers.
pub const FLOOD_PPS: u64 = 200_000;
const TCP_PORT: u16 = 5201;

#[derive(Debug, Serialize, Deserialize)]
pub struct UnderlayRow {
    pub contender: Contender,
    pub label: String,
    pub tcp_gbps: Summary,
    /// Initiations the flood sent per second (0 without a flood).
    pub flood_kpps: Summary,
    pub error: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct UnderlayBench {
    pub seconds: u32,
    pub flood_pps: u64,
    pub rows: Vec<UnderlayRow>,
}

struct Sample {
    gbps: f64,
    flood_kpps: f64,
}

/// Sends initiations to `target` from `ns` at `pps` until `stop`; returns how many were sent.
fn flood(
    ns: &gateway_testkit::netns::Netns,
    target: SocketAddr,
    pps: u64,
    stop: &AtomicBool,
) -> u64 {
    ns.run_scoped(|| {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("flood socket");
        let mut initiation = [0u8; 148];
        initiation[0] = 1;
        let (started, mut sent) = (Instant::now(), 0u64);
        while !stop.load(Ordering::Relaxed) {
            // Paced in bursts of 64: ahead of schedule, wait.
            let due = started.elapsed().as_secs_f64() * pps as f64;
            if (sent as f64) > due {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            for _ in 0..64 {
                initiation[4..12].copy_from_slice(&sent.to_le_bytes());
                sent += s.send_to(&initiation, target).is_ok() as u64;
            }
        }
        sent
    })
    .unwrap_or(0)
}

fn measure_one(c: Contender, setup: &wireguard::Setup, seconds: u32) -> anyhow::Result<Sample> {
    // Native XDP, as on a NIC; and what `auto` takes on the lab's veth, TC ingress (where the
    // peer keeps its UDP GSO).
    let filter = match c {
        Contender::UnderlayFloodFiltered => {
            "  underlay:\n    - name: u1\n      attach: xdp-native\n"
        }
        Contender::UnderlayFloodFilteredTc => "  underlay:\n    - name: u1\n      attach: tc\n",
        _ => "",
    };
    let running = wireguard::bring_up_with(Contender::WgGatewayBoringtun, setup, filter)?;
    let peer = &setup.lab.peers[0];
    let target = SocketAddr::new(IpAddr::V4(peer.gw_underlay), WG_PORT);
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let (tcp, sent) = std::thread::scope(|scope| {
        let flooding = (c != Contender::UnderlayQuiet)
            .then(|| scope.spawn(|| flood(&peer.ns, target, FLOOD_PPS, &stop)));
        let tcp = iperf::run(
            &peer.ns,
            &setup.lab.lan,
            WG_LAN_HOST.parse().expect("constant"),
            Run {
                transfer: Transfer::Tcp,
                reverse: false,
                seconds,
                port: TCP_PORT,
            },
        );
        stop.store(true, Ordering::Relaxed);
        (tcp, flooding.map(|h| h.join().unwrap_or(0)).unwrap_or(0))
    });
    let elapsed = started.elapsed().as_secs_f64();
    let tcp = tcp?;
    if matches!(
        c,
        Contender::UnderlayFloodFiltered | Contender::UnderlayFloodFilteredTc
    ) {
        // The filter did the work: most initiations were limited in the kernel.
        let st: gateway::status::Report = running
            .gateway
            .as_ref()
            .expect("gateway")
            .status(&setup.lab.gw)?;
        let limited: u64 = st
            .underlay
            .iter()
            .filter(|r| r.reason.starts_with("rate_limited"))
            .map(|r| r.packets)
            .sum();
        if limited < sent / 2 {
            bail!("the underlay filter limited only {limited} of {sent} initiations");
        }
    }
    Ok(Sample {
        gbps: tcp.bits_per_second / 1e9,
        flood_kpps: sent as f64 / elapsed / 1e3,
    })
}

pub fn run(quick: bool) -> anyhow::Result<UnderlayBench> {
    let trials = if quick { 1 } else { 5 };
    let seconds = if quick { 2 } else { 5 };
    let setup = wireguard::setup()?;
    let outcomes = alternate(
        "bench underlay",
        &CONTENDERS,
        |c| c.label().to_string(),
        trials,
        |c| measure_one(c, &setup, seconds),
        |s| format!("{:.2} Gbit/s TCP, flood {:.0} kpps", s.gbps, s.flood_kpps),
    );
    let rows = CONTENDERS
        .iter()
        .zip(outcomes)
        .map(|(&c, o)| UnderlayRow {
            contender: c,
            label: c.label().to_string(),
            tcp_gbps: Summary::of_or_zero(o.samples.iter().map(|s| s.gbps).collect()),
            flood_kpps: Summary::of_or_zero(o.samples.iter().map(|s| s.flood_kpps).collect()),
            error: o.error,
        })
        .collect();
    Ok(UnderlayBench {
        seconds,
        flood_pps: FLOOD_PPS,
        rows,
    })
}

pub fn markdown(md: &mut String, b: &UnderlayBench) {
    let _ = writeln!(
        md,
        "## Underlay filter: an established tunnel under a handshake-initiation flood\n"
    );
    let _ = writeln!(
        md,
        "The gateway terminates WireGuard (boringtun, in its process) as the routing peer of scenario \"wireguard\"; one iperf3 TCP stream for {} s runs from the peer through the tunnel to the LAN host, while a sender on the peer's underlay link offers {} handshake initiations per second (148 bytes, invalid MACs) to the WireGuard port: with the gateway's underlay filter on that link (well-formed messages only, initiations rate-limited per source and in total) in native XDP, as on a NIC, and at TC ingress, as `attach: auto` takes it on a veth (an XDP program on a veth switches off the peer's UDP GSO, which wireguard-go sends with; at TC the peer keeps it), and without it (every initiation reaches boringtun's socket, which reads and rejects it). Without a flood: the reference. The flood's sender shares the VM's 2 cores with everything else in every flooded row alike. Every contender in each trial, alternating; median (min–max).\n",
        b.seconds, b.flood_pps
    );
    let _ = writeln!(md, "| contender | TCP (Gbit/s) | flood sent (kpps) |");
    let _ = writeln!(md, "|---|---:|---:|");
    for r in &b.rows {
        if let Some(e) = &r.error {
            let _ = writeln!(md, "| {} | not measured: {e} | |", r.label);
            continue;
        }
        let _ = writeln!(
            md,
            "| {} | {:.2} ({:.2}–{:.2}) | {:.0} ({:.0}–{:.0}) |",
            r.label,
            r.tcp_gbps.median,
            r.tcp_gbps.min,
            r.tcp_gbps.max,
            r.flood_kpps.median,
            r.flood_kpps.min,
            r.flood_kpps.max
        );
    }
    let find = |c: Contender| {
        b.rows
            .iter()
            .find(|r| r.contender == c && r.error.is_none())
            .map(|r| r.tcp_gbps.median)
    };
    if let (Some(quiet), Some(on), Some(off)) = (
        find(Contender::UnderlayQuiet),
        find(Contender::UnderlayFloodFiltered),
        find(Contender::UnderlayFloodUnfiltered),
    ) {
        let _ = writeln!(
            md,
            "\nUnder the flood the tunnel keeps {:.0}% of its quiet throughput with the XDP filter and {:.0}% without it (filter on ÷ off: {:.2}x).",
            100.0 * on / quiet,
            100.0 * off / quiet,
            on / off
        );
        if let Some(tc) = find(Contender::UnderlayFloodFilteredTc) {
            let _ = writeln!(
                md,
                "With the filter at TC: {:.0}% of the quiet throughput (TC ÷ no filter: {:.2}x; TC ÷ XDP: {:.2}x).",
                100.0 * tc / quiet,
                tc / off,
                tc / on
            );
        }
    }
    md.push('\n');
}
