//! Scenario "tcp": TCP (iperf3) from the generator host to the sink host through the device under
//! test — plain kernel forwarding (the ceiling) against the gateway and the kernel filters, each
//! holding 1,000 rules plus the one that admits the iperf3 flow. Two variants:
//!
//! - as hosts send by default (TSO/GSO on): the gateway's tunnel hooks (TC) on the generator
//!   side meet the GSO aggregates a tunnel device carries, its LAN hook the replies (attached as
//!   the default `attach: auto` does: TC on this veth); also
//!   the routing peer's full path (policy, masquerade and forwarding in eBPF) against NetBird's
//!   nftables, and each both ways (iperf3 -R: the LAN side sends, through the reverse
//!   translation);
//! - labelled "offloads off": 1500-byte packets on the wire and the gateway's XDP forwarding
//!   between two LAN interfaces (frames forwarded by XDP keep no checksum-offload state, so the
//!   end hosts must compute full checksums).

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::Context as _;
use gateway_policy::{
    Action, DEFAULT_PRIORITY, Group, GroupRef, Policy, PortRange, PortSet, Protocol,
};
use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::{
    alternate::alternate,
    contenders::{self, Contender},
    rules::{self, Rule, Synthetic},
    stats::Summary,
    topo::{GEN_ADDR, SINK_ADDR, Topo},
};

pub const IPERF_PORT: u16 = 5201;
pub const RULES: usize = 1_000;

#[derive(Debug, Serialize, Deserialize)]
pub struct TcpRow {
    pub contender: Contender,
    pub label: String,
    pub gbps: Summary,
    pub retransmits: Summary,
    /// The LAN side sending (iperf3 -R), where measured.
    #[serde(default)]
    pub reverse_gbps: Option<Summary>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Tcp {
    pub rules: usize,
    pub seconds: u32,
    pub mtu: u32,
    /// Offloads off, XDP forwarding (the labelled variant).
    pub rows: Vec<TcpRow>,
    /// Default offloads, through the tunnel hooks.
    #[serde(default)]
    pub tunnel_rows: Vec<TcpRow>,
}

/// The contenders that pass TCP both ways: plain forwarding first (the ceiling).
pub const CONTENDERS: [Contender; 4] = [
    Contender::KernelForward,
    Contender::Gateway,
    Contender::NftSets,
    Contender::IptablesLinear,
];
/// The same at default offloads, with the gateway on its tunnel hooks; and the routing peer's
/// full path (the sink's network is the masqueraded route) against NetBird's nftables.
pub const TUNNEL_CONTENDERS: [Contender; 6] = [
    Contender::KernelForward,
    Contender::GatewayTunnel,
    Contender::NftSets,
    Contender::IptablesLinear,
    Contender::GatewayMasquerade,
    Contender::NftMasquerade,
];

pub fn label(c: Contender) -> &'static str {
    match c {
        Contender::KernelForward => "plain kernel forwarding (ceiling)",
        other => other.label(),
    }
}

/// The synthetic rules plus one accepting the iperf3 flow (generator host → sink, TCP 5201).
fn rules_with_iperf() -> anyhow::Result<Synthetic> {
    let mut syn = rules::synthetic(RULES, 1500, Protocol::Tcp, "198.19.0.0/24".parse()?);
    let src: Ipv4Net = format!("{GEN_ADDR}/32").parse()?;
    syn.set.groups.push(Group {
        name: "iperf-client".into(),
        members: vec![IpNet::V4(src)],
    });
    syn.set.policies.push(Policy {
        name: "iperf".into(),
        enabled: true,
        description: String::new(),
        source_groups: vec![GroupRef::Named("iperf-client".into())],
        destination_groups: vec![GroupRef::Named("dst".into())],
        bidirectional: false,
        action: Action::Accept,
        protocol: Protocol::Tcp,
        ports: PortSet::from_ranges(vec![PortRange {
            start: IPERF_PORT,
            end: IPERF_PORT,
        }]),
        destination_ips: vec![],
        exceptions: vec![],
        priority: DEFAULT_PRIORITY,
    });
    syn.rules.push(Rule {
        src,
        port: IPERF_PORT,
        accept: true,
    });
    Ok(syn)
}

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One iperf3 run: received Gbit/s and the sender's retransmissions; `reverse`: the sink
/// sends (iperf3 -R), on a connection the generator side still opens.
fn iperf(topo: &Topo, seconds: u32, reverse: bool) -> anyhow::Result<(f64, f64)> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &topo.gen_ns.name,
            "iperf3",
            "-c",
            SINK_ADDR,
            "-p",
            &IPERF_PORT.to_string(),
            "-t",
            &seconds.to_string(),
            "-J",
        ])
        .args(reverse.then_some("-R"))
        .output()
        .context("iperf3 client")?;
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("iperf3 -J output")?;
    if let Some(e) = json.get("error") {
        anyhow::bail!("iperf3: {e}");
    }
    let end = &json["end"];
    let bps = end["sum_received"]["bits_per_second"]
        .as_f64()
        .context("sum_received")?;
    let retransmits = end["sum_sent"]["retransmits"].as_f64().unwrap_or(0.0);
    Ok((bps / 1e9, retransmits))
}

pub fn run(quick: bool) -> anyhow::Result<Tcp> {
    let syn = rules_with_iperf()?;
    let trials = if quick { 2 } else { 5 };
    let seconds = if quick { 2 } else { 5 };
    // As hosts send: the end hosts keep their default offloads.
    let tunnel_rows = {
        let topo = Topo::create()?;
        measure(
            &topo,
            &TUNNEL_CONTENDERS,
            &syn,
            trials,
            seconds,
            true,
            "bench tcp (default offloads, tunnel hooks)",
        )?
    };
    let topo = Topo::create()?;
    // Full-size frames, no segmentation offload: 1500-byte packets on the wire, and senders
    // that compute full checksums (frames forwarded by XDP keep no checksum-offload state).
    for (ns, dev) in [(&topo.gen_ns, "g0"), (&topo.sink, "s0")] {
        ns.exec(&[
            "ethtool", "-K", dev, "tx", "off", "tso", "off", "gso", "off",
        ])?;
        // A veth receives redirected XDP frames only with NAPI on: GRO on the end hosts.
        ns.exec(&["ethtool", "-K", dev, "gro", "on"])?;
    }
    let rows = measure(
        &topo,
        &CONTENDERS,
        &syn,
        trials,
        seconds,
        false,
        "bench tcp (offloads off, XDP forwarding)",
    )?;
    Ok(Tcp {
        rules: RULES,
        seconds,
        mtu: 1500,
        rows,
        tunnel_rows,
    })
}

/// iperf3 through each contender in turn, alternating, `trials` times (and the other way too
/// when `both_ways`).
fn measure(
    topo: &Topo,
    contenders: &[Contender],
    syn: &Synthetic,
    trials: usize,
    seconds: u32,
    both_ways: bool,
    tag: &str,
) -> anyhow::Result<Vec<TcpRow>> {
    let _server = Server(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &topo.sink.name,
                "iperf3",
                "-s",
                "-p",
                &IPERF_PORT.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("iperf3 server")?,
    );
    std::thread::sleep(Duration::from_millis(300));
    let outcomes = alternate(
        tag,
        contenders,
        |c| label(c).to_string(),
        trials,
        |c| {
            let installed = contenders::install(c, topo, None, Some(syn), true)?;
            let forward = iperf(topo, seconds, false);
            let reverse = match (&forward, both_ways) {
                (Ok(_), true) => iperf(topo, seconds, true).map(|(g, _)| Some(g)),
                _ => Ok(None),
            };
            contenders::remove(installed, topo, None)?;
            let (gbps, rtx) = forward?;
            Ok((gbps, rtx, reverse?))
        },
        |(gbps, rtx, rev)| match rev {
            Some(r) => format!("{gbps:.2} Gbit/s ({rtx} retransmits), reverse {r:.2} Gbit/s"),
            None => format!("{gbps:.2} Gbit/s, {rtx} retransmits"),
        },
    );
    Ok(outcomes
        .into_iter()
        .zip(contenders)
        .map(|(o, &c)| TcpRow {
            contender: c,
            label: label(c).to_string(),
            gbps: Summary::of_or_zero(o.samples.iter().map(|x| x.0).collect()),
            retransmits: Summary::of_or_zero(o.samples.iter().map(|x| x.1).collect()),
            reverse_gbps: both_ways
                .then(|| Summary::of_or_zero(o.samples.iter().filter_map(|x| x.2).collect())),
            error: o.error,
        })
        .collect())
}

pub fn markdown(md: &mut String, t: &Tcp) {
    use std::fmt::Write as _;
    if !t.tunnel_rows.is_empty() {
        let _ = writeln!(
            md,
            "## TCP throughput at default offloads, through the tunnel hooks (iperf3), {} rules\n",
            t.rules
        );
        let _ = writeln!(
            md,
            "One iperf3 stream of {} s per trial from the generator host to the sink host through the DUT, MTU {}, the end hosts' default offloads (TSO/GSO on): the DUT's generator-side veth carries 64 KiB GSO aggregates, as a tunnel device does. The gateway judges them with its tunnel programs (TC ingress and egress on that veth) and the replies with its LAN program, attached as its default (`attach: auto`) does on a veth: at TC ingress (an XDP program on the sink's veth peer switches off the sink's segmentation offload: a run with XDP there measured the reverse direction at 3–4 Gbit/s against 24 for every other contender); the kernel forwards. The routing peer's full path: the gateway's policy, conntrack, masquerade and forwarding in TC on the tunnel side (the sink's network is the masqueraded route), against NetBird's nftables (sets behind conntrack, masquerade by mark, MSS clamp, kernel forwarding). Each filter holds {} synthetic TCP rules plus the one that admits the flow; return traffic passes by conntrack. Reverse: the same connection setup, the sink sending (iperf3 -R), so the data crosses the reverse translation. Contenders alternate within each trial. Gbit/s median (min–max).\n",
            t.seconds, t.mtu, t.rules
        );
        table(md, &t.tunnel_rows, Contender::GatewayTunnel);
        full_path_target(md, &t.tunnel_rows);
    }
    let _ = writeln!(
        md,
        "## TCP throughput, offloads off: 1500-byte packets, XDP forwarding (iperf3), {} rules\n",
        t.rules
    );
    let _ = writeln!(
        md,
        "The labelled variant: one iperf3 stream of {} s per trial, MTU {}, no segmentation offload on the end hosts (so the DUT handles 1500-byte packets, and XDP-forwarded frames carry full checksums), GRO off on the DUT's veths; the gateway forwards in XDP between its two LAN interfaces. Each filter holds {} synthetic TCP rules plus the one that admits the flow; the kernel filters accept return traffic by conntrack, the gateway by its own. Contenders alternate within each trial. Gbit/s median (min–max).\n",
        t.seconds, t.mtu, t.rules
    );
    table(md, &t.rows, Contender::Gateway);
}

fn table(md: &mut String, rows: &[TcpRow], gateway: Contender) {
    use std::fmt::Write as _;
    let ceiling = rows
        .iter()
        .find(|r| r.contender == Contender::KernelForward && r.error.is_none())
        .map(|r| r.gbps.median);
    let both_ways = rows.iter().any(|r| r.reverse_gbps.is_some());
    let ceiling_reverse = rows
        .iter()
        .find(|r| r.contender == Contender::KernelForward && r.error.is_none())
        .and_then(|r| r.reverse_gbps.as_ref().map(|s| s.median));
    if both_ways {
        let _ = writeln!(
            md,
            "| contender | Gbit/s | retransmits | vs plain forwarding | reverse Gbit/s | vs plain forwarding |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
    } else {
        let _ = writeln!(
            md,
            "| contender | Gbit/s | retransmits | vs plain forwarding |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|");
    }
    for r in rows {
        match &r.error {
            Some(e) => {
                let _ = writeln!(
                    md,
                    "| {} | not measured: {} | | |",
                    r.label,
                    e.lines().next().unwrap_or("")
                );
            }
            None => {
                let ratio = ceiling
                    .map(|c| format!("{:.2}", r.gbps.median / c))
                    .unwrap_or_default();
                let reverse = match (&r.reverse_gbps, ceiling_reverse) {
                    (Some(s), c) => format!(
                        " {:.2} ({:.2}–{:.2}) | {} |",
                        s.median,
                        s.min,
                        s.max,
                        c.map(|c| format!("{:.2}", s.median / c))
                            .unwrap_or_default()
                    ),
                    (None, _) => String::new(),
                };
                let _ = writeln!(
                    md,
                    "| {} | {:.2} ({:.2}–{:.2}) | {:.0} | {ratio} |{reverse}",
                    r.label, r.gbps.median, r.gbps.min, r.gbps.max, r.retransmits.median
                );
            }
        }
    }
    if let (Some(c), Some(g)) = (
        ceiling,
        rows.iter()
            .find(|r| r.contender == gateway && r.error.is_none()),
    ) {
        let ratio = g.gbps.median / c;
        let _ = writeln!(
            md,
            "\nTarget: the gateway no worse than 10% below plain forwarding: {} ({:.0}% of it).\n",
            if ratio >= 0.9 { "met" } else { "NOT met" },
            ratio * 100.0
        );
    }
}

/// Issue target for the routing peer's full path (policy + masquerade + forwarding): within 10%
/// of plain kernel forwarding, each way measured.
fn full_path_target(md: &mut String, rows: &[TcpRow]) {
    use std::fmt::Write as _;
    let ok = |c: Contender| rows.iter().find(|r| r.contender == c && r.error.is_none());
    let (Some(ceiling), Some(gw)) = (
        ok(Contender::KernelForward),
        ok(Contender::GatewayMasquerade),
    ) else {
        return;
    };
    let mut ratios = vec![("forward", gw.gbps.median / ceiling.gbps.median)];
    if let (Some(g), Some(c)) = (&gw.reverse_gbps, &ceiling.reverse_gbps) {
        ratios.push(("reverse", g.median / c.median));
    }
    let met = ratios.iter().all(|(_, r)| *r >= 0.9);
    let each: Vec<String> = ratios
        .iter()
        .map(|(way, r)| format!("{way} {:.0}%", r * 100.0))
        .collect();
    let nft = ok(Contender::NftMasquerade)
        .map(|n| {
            format!(
                "; gateway / NetBird's nftables {:.2}x",
                gw.gbps.median / n.gbps.median
            )
        })
        .unwrap_or_default();
    let _ = writeln!(
        md,
        "Target: the full path (policy + masquerade + forwarding) within 10% of plain forwarding: {} ({}{nft}).\n",
        if met { "met" } else { "NOT met" },
        each.join(", ")
    );
}
