//! Scenario "wireguard": a peer → the routing peer → a LAN server, through a real WireGuard
//! tunnel, as a NetBird routing peer carries it. The peer runs wireguard-go; the routing peer runs,
//! on each of two WireGuard implementations (boringtun, wireguard-go), three contenders:
//!
//! - the gateway: its eBPF policy (1,000 rules plus the peer's), masquerade and forwarding in TC
//!   (`tunnel_forward: tc`); on boringtun it runs the device itself (backend userspace), on
//!   wireguard-go it filters the interface wireguard-go runs (backend external);
//! - NetBird's path: the same device, the kernel forwarding, nftables as NetBird installs it (the
//!   ACL as sets behind conntrack, masquerade by mark, MSS clamp);
//! - the same device with plain forwarding and no filter (the ceiling).
//!
//! So the data plane is compared on equal crypto. TCP: one iperf3 stream, default offloads.
//! UDP: iperf3 with 64-byte payloads, counted where they arrive (the iperf3 server).

use std::{fmt::Write as _, net::IpAddr, time::Duration};

use anyhow::{Context as _, bail};
use gateway_testkit::{
    iperf::{self, Run, Transfer},
    process::GatewayProcess,
    traffic,
    wireguard::{WG_GW_LAN, WG_GW_OVERLAY, WG_LAN_HOST, WG_PORT, WgLab, WgPeer, keypair, wait_for},
};
use serde::{Deserialize, Serialize};

use crate::{alternate::alternate, contenders::Contender, stats::Summary};

pub const RULES: usize = 1_000;
const TCP_PORT: u16 = 5201;
const UDP_PORT: u16 = 5202;
/// 64-byte datagrams offered at this rate (more than one socket sender reaches).
const UDP_MBIT: u32 = 400;

pub const CONTENDERS: [Contender; 6] = [
    Contender::WgPlainBoringtun,
    Contender::WgGatewayBoringtun,
    Contender::WgNetbirdBoringtun,
    Contender::WgPlainWireguardGo,
    Contender::WgGatewayWireguardGo,
    Contender::WgNetbirdWireguardGo,
];

#[derive(Debug, Serialize, Deserialize)]
pub struct WgRow {
    pub contender: Contender,
    pub label: String,
    pub tcp_gbps: Summary,
    pub udp_kpps: Summary,
    pub error: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WireGuardBench {
    pub rules: usize,
    pub seconds: u32,
    pub rows: Vec<WgRow>,
}

/// The routing peer's WireGuard device for one measurement; removed when dropped.
enum Device {
    /// boringtun, in this process (the same crate and version the gateway runs).
    Boringtun {
        _device: gateway_wireguard::Tunnel,
    },
    WireguardGo {
        _device: WgPeer,
    },
    /// The gateway process runs the device itself.
    InGateway,
}

pub(crate) struct Running {
    ns: String,
    pub(crate) gateway: Option<GatewayProcess>,
    device: Option<Device>,
    nft: Option<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(g) = self.gateway.take() {
            let _ = g.stop();
        }
        if let Some(ns) = &self.nft {
            let _ = gateway_testkit::netns::exec_in(ns, &["nft", "flush", "ruleset"]);
        }
        // boringtun's threads end after its handle drops, and the TUN goes with the last one:
        // the next contender's device takes the name only once it is free.
        self.device.take();
        let _ = wait_for(Duration::from_secs(5), || {
            gateway_testkit::netns::exec_in(&self.ns, &["ip", "link", "show", DEVICE]).is_err()
        });
    }
}

pub(crate) struct Setup {
    pub(crate) lab: WgLab,
    /// The routing peer's key pair (base64): one key for every contender, as the peer knows it.
    private: String,
    public: String,
    policy: std::path::PathBuf,
}

const DEVICE: &str = "wgbench0";

fn is_boringtun(c: Contender) -> bool {
    matches!(
        c,
        Contender::WgPlainBoringtun | Contender::WgGatewayBoringtun | Contender::WgNetbirdBoringtun
    )
}

/// The policy: filler rules from sources that send nothing, and the peer's TCP and UDP ports.
fn policy_yaml(peer: &str) -> String {
    let mut y = String::from("groups:\n  peer: [\"");
    y.push_str(peer);
    y.push_str("/32\"]\n  lan: [\"198.18.10.0/24\"]\n");
    for i in 0..RULES {
        let _ = writeln!(y, "  f{i}: [\"198.19.{}.{}/32\"]", i / 256, i % 256);
    }
    y.push_str("policies:\n");
    for i in 0..RULES {
        let _ = writeln!(
            y,
            "  - {{name: f{i}, source_groups: [f{i}], destination_groups: [lan], action: accept, protocol: tcp, ports: [\"{}\"]}}",
            1000 + i
        );
    }
    let _ = writeln!(
        y,
        "  - {{name: peer-tcp, source_groups: [peer], destination_groups: [lan], action: accept, protocol: tcp, ports: [\"{TCP_PORT}\", \"{UDP_PORT}\"]}}"
    );
    let _ = writeln!(
        y,
        "  - {{name: peer-udp, source_groups: [peer], destination_groups: [lan], action: accept, protocol: udp, ports: [\"{UDP_PORT}\"]}}"
    );
    // Ping says when the tunnel is up.
    let _ = writeln!(
        y,
        "  - {{name: peer-ping, source_groups: [peer], destination_groups: [lan], action: accept, protocol: icmp}}"
    );
    y
}

/// What NetBird installs on a routing peer for this route (routing-peer.md), with the same
/// rules as the gateway's policy.
fn netbird_nft(peer: &str, device: &str) -> String {
    let mut s = String::from(
        "table inet netbird_acl {\n  set allow_tcp {\n    type ipv4_addr . inet_service\n    flags interval\n  }\n  set allow_udp {\n    type ipv4_addr . inet_service\n    flags interval\n  }\n",
    );
    s.push_str("  chain forward {\n    type filter hook forward priority filter; policy drop;\n    ct state established,related accept\n");
    let _ = writeln!(
        s,
        "    iifname \"{device}\" ip saddr . tcp dport @allow_tcp accept\n    iifname \"{device}\" ip saddr . udp dport @allow_udp accept\n    iifname \"{device}\" ip saddr {peer} icmp type echo-request accept\n  }}\n}}"
    );
    let fill: Vec<String> = (0..RULES)
        .map(|i| format!("198.19.{}.{} . {}", i / 256, i % 256, 1000 + i))
        .collect();
    for chunk in fill.chunks(2_000) {
        let _ = writeln!(
            s,
            "add element inet netbird_acl allow_tcp {{ {} }}",
            chunk.join(", ")
        );
    }
    let _ = writeln!(
        s,
        "add element inet netbird_acl allow_tcp {{ {peer} . {TCP_PORT}, {peer} . {UDP_PORT} }}\nadd element inet netbird_acl allow_udp {{ {peer} . {UDP_PORT} }}"
    );
    let _ = writeln!(
        s,
        "table ip netbird {{\n  chain prerouting {{\n    type filter hook prerouting priority mangle; policy accept;\n    iifname \"{device}\" ct state new ip daddr 198.18.10.0/24 meta mark set 0x1bd21\n  }}\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    meta mark 0x1bd21 masquerade\n  }}\n  chain mssclamp {{\n    type filter hook forward priority mangle; policy accept;\n    oifname \"{device}\" tcp flags syn tcp option maxseg size set 1240\n  }}\n}}"
    );
    s
}

/// The gateway's configuration; `interfaces_extra` is added under `interfaces:` (two-space
/// indented lines, e.g. an underlay filter).
fn gateway_config(
    setup: &Setup,
    backend: &str,
    interfaces_extra: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let lab = &setup.lab;
    let peer = &lab.peers[0];
    let wg = if backend == "external" {
        format!("wireguard:\n  backend: external\n  interface: {DEVICE}\n")
    } else {
        format!(
            "wireguard:\n  backend: {backend}\n  interface: {DEVICE}\n  address: {WG_GW_OVERLAY}/10\n  peers:\n    - public_key: {}\n      allowed_ips: [{}/32]\n",
            peer.peer.public_key, peer.overlay
        )
    };
    let cfg = format!(
        "policy: {}\nmetrics_addr: {}\npin_dir: null\n{wg}interfaces:\n  tunnel_forward: tc\n  lan:\n    - name: lan0\n{interfaces_extra}masquerade:\n  networks: [198.18.10.0/24]\n",
        setup.policy.display(),
        gateway_testkit::process::LAB_METRICS_ADDR
    );
    let path = lab.dir.join(format!("gateway-{backend}.yaml"));
    std::fs::write(&path, cfg)?;
    Ok(path)
}

/// Brings up the routing peer's side of contender `c`.
fn bring_up(c: Contender, setup: &Setup) -> anyhow::Result<Running> {
    bring_up_with(c, setup, "")
}

/// As [`bring_up`], with more under the gateway's `interfaces:` (see [`gateway_config`]).
pub(crate) fn bring_up_with(
    c: Contender,
    setup: &Setup,
    interfaces_extra: &str,
) -> anyhow::Result<Running> {
    let lab = &setup.lab;
    let peer = &lab.peers[0];
    let mut running = Running {
        ns: lab.gw.name.clone(),
        gateway: None,
        device: None,
        nft: None,
    };
    let state = lab.dir.join("state");
    std::fs::create_dir_all(&state)?;
    // The gateway reads its key from the state directory (mode 0600).
    let key_file = state.join("wg.key");
    let _ = std::fs::remove_file(&key_file);
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_file)?;
        std::io::Write::write_all(&mut f, format!("{}\n", setup.private).as_bytes())?;
    }
    if !matches!(c, Contender::WgGatewayBoringtun) {
        running.device = Some(if is_boringtun(c) {
            let spec = gateway_wireguard::DeviceSpec {
                name: DEVICE.into(),
                private_key: setup.private.clone(),
                listen_port: WG_PORT,
                mtu: 1280,
            };
            let peers = vec![gateway_wireguard::PeerSpec {
                public_key: peer.peer.public_key.clone(),
                allowed_ips: vec![format!("{}/32", peer.overlay).parse()?],
                endpoint: None,
                keepalive: None,
            }];
            // Created in the routing peer's namespace: the device's threads and sockets stay there.
            let tunnel =
                lab.gw
                    .run_scoped(|| -> anyhow::Result<gateway_wireguard::Tunnel> {
                        let t = gateway_wireguard::Tunnel::open(
                            gateway_wireguard::BackendChoice::Userspace,
                            &spec,
                        )?;
                        t.set_addresses(&[format!("{WG_GW_OVERLAY}/10").parse()?])?;
                        t.apply_peers(&gateway_wireguard::PeerSet::check(&peers, None)?)?;
                        Ok(t)
                    })??;
            Device::Boringtun { _device: tunnel }
        } else {
            let d = WgPeer::start_with_key(
                &lab.gw,
                DEVICE,
                &format!("{WG_GW_OVERLAY}/10"),
                1280,
                &setup.private,
            )?;
            d.set_listen_port(WG_PORT)?;
            d.add_peer(
                &peer.peer.public_key,
                None,
                &format!("{}/32", peer.overlay),
                0,
            )?;
            Device::WireguardGo { _device: d }
        });
    } else {
        running.device = Some(Device::InGateway);
    }
    match c {
        Contender::WgGatewayBoringtun | Contender::WgGatewayWireguardGo => {
            let backend = if c == Contender::WgGatewayBoringtun {
                "userspace"
            } else {
                "external"
            };
            let cfg = gateway_config(setup, backend, interfaces_extra)?;
            let log = lab.dir.join(format!("gateway-{backend}.log"));
            let g = GatewayProcess::start_with(
                &crate::management::gateway_binary()?,
                &lab.gw,
                &cfg,
                &log,
                &["--state-dir", state.to_str().context("path")?],
            )?;
            running.gateway = Some(g);
        }
        Contender::WgNetbirdBoringtun | Contender::WgNetbirdWireguardGo => {
            let path = lab.dir.join("netbird.nft");
            std::fs::write(&path, netbird_nft(&peer.overlay.to_string(), DEVICE))?;
            lab.gw
                .exec(&["nft", "-f", path.to_str().context("path")?])?;
            running.nft = Some(lab.gw.name.clone());
        }
        _ => {}
    }
    // A fresh session for the device just made: the peer forgets the old one.
    let _ = peer.peer.remove_peer(&setup.public);
    peer.peer.add_peer(
        &setup.public,
        Some(&format!("{}:{WG_PORT}", peer.gw_underlay)),
        "100.64.0.0/10,198.18.10.0/24",
        0,
    )?;
    let lan: IpAddr = WG_LAN_HOST.parse()?;
    if !wait_for(Duration::from_secs(10), || traffic::ping(&peer.ns, lan)) {
        bail!("no traffic through the tunnel within 10 s");
    }
    Ok(running)
}

struct Sample {
    gbps: f64,
    kpps: f64,
}

fn measure_one(c: Contender, setup: &Setup, seconds: u32) -> anyhow::Result<Sample> {
    let _running = bring_up(c, setup)?;
    let (peer, lan) = (&setup.lab.peers[0].ns, &setup.lab.lan);
    let addr: IpAddr = WG_LAN_HOST.parse()?;
    let tcp = iperf::run(
        peer,
        lan,
        addr,
        Run {
            transfer: Transfer::Tcp,
            reverse: false,
            seconds,
            port: TCP_PORT,
        },
    )?;
    let udp = iperf::run(
        peer,
        lan,
        addr,
        Run {
            transfer: Transfer::Udp {
                payload: 64,
                mbit_per_s: UDP_MBIT,
            },
            reverse: false,
            seconds,
            port: UDP_PORT,
        },
    )?;
    if tcp.bytes_received == 0 {
        bail!("TCP delivered nothing");
    }
    let received = udp.packets.saturating_sub(udp.lost_packets);
    Ok(Sample {
        gbps: tcp.bits_per_second / 1e9,
        kpps: received as f64 / seconds as f64 / 1e3,
    })
}

pub(crate) fn setup() -> anyhow::Result<Setup> {
    let lab = WgLab::new(1)?;
    // The ceiling forwards without masquerade: the LAN host routes the overlay back.
    lab.lan
        .ip(&["route", "add", "100.64.0.0/10", "via", WG_GW_LAN])?;
    let (private, public) = keypair()?;
    let policy = lab.dir.join("policy.yaml");
    std::fs::write(&policy, policy_yaml(&lab.peers[0].overlay.to_string()))?;
    Ok(Setup {
        lab,
        private,
        public,
        policy,
    })
}

pub fn run(quick: bool) -> anyhow::Result<WireGuardBench> {
    let trials = if quick { 1 } else { 11 };
    let seconds = if quick { 2 } else { 5 };
    let setup = setup()?;
    let outcomes = alternate(
        "bench wireguard",
        &CONTENDERS,
        |c| c.label().to_string(),
        trials,
        |c| measure_one(c, &setup, seconds),
        |s| format!("{:.2} Gbit/s TCP, {:.0} kpps UDP", s.gbps, s.kpps),
    );
    let rows = CONTENDERS
        .iter()
        .zip(outcomes)
        .map(|(&c, o)| WgRow {
            contender: c,
            label: c.label().to_string(),
            tcp_gbps: Summary::of_or_zero(o.samples.iter().map(|s| s.gbps).collect()),
            udp_kpps: Summary::of_or_zero(o.samples.iter().map(|s| s.kpps).collect()),
            error: o.error,
        })
        .collect();
    Ok(WireGuardBench {
        rules: RULES,
        seconds,
        rows,
    })
}

pub fn markdown(md: &mut String, b: &WireGuardBench) {
    let _ = writeln!(
        md,
        "## Through WireGuard: peer → routing peer → LAN server ({} rules)\n",
        b.rules
    );
    let _ = writeln!(
        md,
        "The peer runs wireguard-go; the routing peer runs boringtun (the crate the gateway embeds) or wireguard-go, and on each the gateway (eBPF policy, masquerade, forwarding in TC), NetBird's path (the same device, nftables sets behind conntrack, masquerade by mark, MSS clamp, kernel forwarding) and the same device with plain forwarding (the ceiling). TCP: one iperf3 stream for {} s at default offloads. UDP: iperf3, 64-byte payloads offered at {UDP_MBIT} Mbit/s, counted where they arrive. Every contender in each trial, alternating; median (min–max). The tunnel's crypto in userspace dominates (the peer, the routing peer's device, iperf3 and the LAN host share 2 cores): these rows compare data planes on equal crypto, not the crypto, and where min–max ranges overlap the difference is within this VM's run-to-run noise.\n",
        b.seconds
    );
    let _ = writeln!(md, "| contender | TCP (Gbit/s) | UDP 64 B (kpps) |");
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
            r.udp_kpps.median,
            r.udp_kpps.min,
            r.udp_kpps.max
        );
    }
    let find = |c: Contender| {
        b.rows
            .iter()
            .find(|r| r.contender == c && r.error.is_none())
    };
    for (name, gw, nb, plain) in [
        (
            "boringtun",
            Contender::WgGatewayBoringtun,
            Contender::WgNetbirdBoringtun,
            Contender::WgPlainBoringtun,
        ),
        (
            "wireguard-go",
            Contender::WgGatewayWireguardGo,
            Contender::WgNetbirdWireguardGo,
            Contender::WgPlainWireguardGo,
        ),
    ] {
        if let (Some(g), Some(n), Some(p)) = (find(gw), find(nb), find(plain)) {
            // Judged on the ratios within each trial (the contenders run back to back), which
            // drift between trials cannot fake; medians of the columns are shown beside them.
            let paired = |a: &Summary, b: &Summary| Summary::paired(&a.trials, &b.trials);
            let show = |r: &Summary| format!("{:.2}x ({:.2}–{:.2})", r.median, r.min, r.max);
            let (tcp_nb, udp_nb) = (
                paired(&g.tcp_gbps, &n.tcp_gbps),
                paired(&g.udp_kpps, &n.udp_kpps),
            );
            let (tcp_plain, udp_plain) = (
                paired(&g.tcp_gbps, &p.tcp_gbps),
                paired(&g.udp_kpps, &p.udp_kpps),
            );
            let met = |ok: bool| if ok { "met" } else { "NOT met" };
            let _ = writeln!(
                md,
                "\nOn {name}, gateway ÷ contender within each trial, median (min–max): ÷ NetBird's path {} TCP, {} UDP (target ≥ 1: {}); ÷ ceiling {} TCP, {} UDP (target ≥ 0.95: {}). By the columns' medians: ÷ NetBird's path {:.2}x TCP, {:.2}x UDP; ÷ ceiling {:.2}x TCP, {:.2}x UDP.",
                show(&tcp_nb),
                show(&udp_nb),
                met(tcp_nb.median >= 1.0 && udp_nb.median >= 1.0),
                show(&tcp_plain),
                show(&udp_plain),
                met(tcp_plain.median >= 0.95 && udp_plain.median >= 0.95),
                g.tcp_gbps.median / n.tcp_gbps.median,
                g.udp_kpps.median / n.udp_kpps.median,
                g.tcp_gbps.median / p.tcp_gbps.median,
                g.udp_kpps.median / p.udp_kpps.median,
            );
        }
    }
    md.push('\n');
}
