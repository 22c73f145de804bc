//! The contenders of the filter scenarios, each installed on the device under test and removed
//! again: the gateway (XDP policy + XDP forwarding), nftables with sets (NetBird's approach),
//! nftables and iptables with linear rule lists, xdp-filter, and the two ceilings.

use std::fmt::Write as _;

use anyhow::Context as _;
use aya::programs::{tc::SchedClassifierLinkId, xdp::XdpLinkId};
use bench_common::{PROG_TC_REDIRECT_SLOTTED, PROG_TC_REDIRECT_TRACKING};
use gateway::config::LanAttach;
use gateway_dataplane::{Dataplane, LoadOptions};
use gateway_policy::compile;

use crate::{
    cost::limits_for,
    generator::{DutXdp, Generator, Measurement},
    rules::Synthetic,
    topo::Topo,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Contender {
    /// No filter: XDP redirect d0 → d1 (the packet-rate ceiling).
    NoopRedirect,
    /// No filter: the same redirect after reading the IPv4 header, as any forwarder must (the
    /// plain redirect never reads the frame): the floor of a forwarding data path.
    ReadingRedirect,
    /// No filter: the same redirect after rewriting what a router rewrites (MAC addresses,
    /// TTL, IPv4 header checksum): the floor of a forwarder that writes the frames it forwards.
    WritingRedirect,
    /// No filter: every frame back out of d0 (XDP_TX), the ceiling of a path on one interface
    /// (a relay with one NIC).
    NoopTx,
    /// No filter: the same XDP_TX after doing to a client's ChannelData what any relay must
    /// (strip its 4-byte header, write the datagram's Ethernet, IPv4 and UDP headers): the
    /// floor of a relay on one interface.
    UnwrappingTx,
    /// No filter: the kernel forwards (the ceiling of every kernel-path contender).
    KernelForward,
    /// No filter: TC ingress on d0 redirects every packet to d1's next hop (the ceiling of a
    /// data path in TC, as the routing peer's tunnel side has).
    TcRedirect,
    /// The same redirect after the least table work of a stateful translator: a flow not seen
    /// before is looked up and recorded under its original and its translated tuple in LRU
    /// hash maps of the gateway's default capacities (the floor of a translator in TC).
    TcTrackingRedirect,
    /// The same work in direct-mapped arrays of the same capacities, without the per-slot
    /// synchronisation a shared store needs: the bound of a flow store outside the kernel's
    /// hash maps.
    TcSlottedRedirect,
    Gateway,
    /// The gateway as a routing peer sees traffic: TC on the tunnel side (d0), XDP on the LAN
    /// side (d1), the kernel forwarding between them.
    GatewayTunnel,
    /// The gateway as a routing peer that masquerades: policy, conntrack, masquerade and
    /// forwarding in TC on the tunnel side (d0, `tunnel_forward: tc`; the masquerade program on
    /// the LAN side's egress, d1, finds the packets translated), replies translated back on d1.
    GatewayMasquerade,
    /// What NetBird installs on a routing peer (routing-peer.md): the ACL as nftables sets
    /// behind `ct state established,related accept`, new connections from the tunnel toward the
    /// masqueraded route marked in prerouting and masqueraded in postrouting, MSS clamped on
    /// SYNs toward the tunnel.
    NftMasquerade,
    NftSets,
    NftLinear,
    IptablesLinear,
    XdpFilter,
    /// Scenario "wireguard" (wireguard.rs): the routing peer's WireGuard device with plain
    /// forwarding, with the gateway, and with NetBird's nftables, on boringtun and on wireguard-go.
    WgPlainBoringtun,
    WgGatewayBoringtun,
    WgNetbirdBoringtun,
    WgPlainWireguardGo,
    WgGatewayWireguardGo,
    WgNetbirdWireguardGo,
    /// Scenario "underlay" (underlay.rs): the gateway terminating WireGuard (boringtun), with a
    /// handshake-initiation flood at its WireGuard port and without, its XDP underlay filter on
    /// and off.
    UnderlayQuiet,
    UnderlayFloodFiltered,
    UnderlayFloodFilteredTc,
    UnderlayFloodUnfiltered,
    /// Scenario "relay" (relay.rs): TURN relays.
    RelayGateway,
    RelayGatewayXdp,
    RelayCoturn,
}

impl Contender {
    /// Every contender, in the order runs and reports list them.
    pub const ALL: [Contender; 9] = [
        Contender::NoopRedirect,
        Contender::ReadingRedirect,
        Contender::WritingRedirect,
        Contender::KernelForward,
        Contender::Gateway,
        Contender::NftSets,
        Contender::NftLinear,
        Contender::IptablesLinear,
        Contender::XdpFilter,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Contender::NoopRedirect => "no-op XDP redirect (ceiling)",
            Contender::NoopTx => "no-op XDP_TX back out of d0 (ceiling)",
            Contender::UnwrappingTx => {
                "XDP_TX that strips ChannelData's header and writes the datagram's headers first (a relay's floor)"
            }
            Contender::ReadingRedirect => {
                "XDP redirect that reads the IP header first (a forwarder's floor)"
            }
            Contender::WritingRedirect => {
                "XDP redirect that rewrites MACs, TTL and checksum first (a router's writes)"
            }
            Contender::KernelForward => "kernel forwarding, no rules",
            Contender::TcRedirect => "no-op TC redirect to the next hop (the TC path's ceiling)",
            Contender::TcTrackingRedirect => {
                "TC redirect that first records a new flow both ways in LRU hash maps (a translator's floor)"
            }
            Contender::TcSlottedRedirect => {
                "TC redirect that first records a new flow both ways in direct-mapped arrays (an unsynchronised flow store's bound)"
            }
            Contender::Gateway => "gateway (XDP policy + XDP forward)",
            Contender::GatewayTunnel => {
                "gateway (tunnel TC + LAN program as attach: auto picks it, kernel forwarding)"
            }
            Contender::GatewayMasquerade => {
                "gateway (tunnel TC: policy, conntrack, masquerade, forwarding)"
            }
            Contender::NftMasquerade => {
                "nftables as NetBird installs it (sets, conntrack, masquerade, MSS clamp)"
            }
            Contender::NftSets => "nftables with sets",
            Contender::NftLinear => "nftables linear rules",
            Contender::IptablesLinear => "iptables linear rules",
            Contender::XdpFilter => "xdp-filter (ports only) + kernel forwarding",
            Contender::WgPlainBoringtun => "boringtun, plain forwarding (ceiling)",
            Contender::WgGatewayBoringtun => {
                "boringtun in the gateway (eBPF policy, masquerade, TC forwarding)"
            }
            Contender::WgNetbirdBoringtun => {
                "boringtun + NetBird's nftables (sets, conntrack, masquerade, MSS clamp)"
            }
            Contender::WgPlainWireguardGo => "wireguard-go, plain forwarding (ceiling)",
            Contender::WgGatewayWireguardGo => {
                "wireguard-go + the gateway (external backend: eBPF policy, masquerade, TC forwarding)"
            }
            Contender::WgNetbirdWireguardGo => {
                "wireguard-go + NetBird's nftables (sets, conntrack, masquerade, MSS clamp)"
            }
            Contender::RelayGateway => "this relay (gateway relay serve, userspace)",
            Contender::RelayGatewayXdp => "this relay, bound channels in XDP (generic)",
            Contender::RelayCoturn => "coturn (turnserver)",
            Contender::UnderlayQuiet => "no flood",
            Contender::UnderlayFloodFiltered => "flood, XDP underlay filter on",
            Contender::UnderlayFloodFilteredTc => {
                "flood, underlay filter at TC ingress (attach: auto on a veth)"
            }
            Contender::UnderlayFloodUnfiltered => {
                "flood, no filter (boringtun reads every datagram)"
            }
        }
    }
}

/// What is installed, for removal.
pub enum Installed {
    /// Plain kernel forwarding with no program at all.
    Nothing,
    Xdp {
        program: DutXdp,
        link: XdpLinkId,
    },
    TcRedirect(XdpLinkId, SchedClassifierLinkId),
    /// A translator's floor: the XDP pass, and its own programs and tables (detached with
    /// them).
    TcFloor(XdpLinkId, Box<aya::Ebpf>),
    /// The gateway; with the generator's XDP_PASS program on d0 where the gateway itself has
    /// only TC there (a veth receives the generator's XDP frames only with an XDP program).
    Gateway(Box<Dataplane>, Option<XdpLinkId>),
    /// `pass`: the XDP_PASS program on d0 a generator needs (none for socket traffic).
    Rules {
        pass: Option<XdpLinkId>,
        cleanup: &'static str,
    },
    XdpFilter,
}

/// `iptables` with the legacy (xtables) backend when the kernel has it, else the nft backend.
fn iptables_restore() -> &'static str {
    if std::process::Command::new("iptables-legacy")
        .arg("-L")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        "iptables-legacy-restore"
    } else {
        "iptables-restore"
    }
}

/// Installs a contender on the DUT. With a `generator`, kernel-path contenders also get the
/// XDP_PASS program on d0 that live frames need; socket traffic (iperf3) needs none.
pub fn install(
    c: Contender,
    topo: &Topo,
    mut generator: Option<&mut Generator>,
    syn: Option<&Synthetic>,
    stateful: bool,
) -> anyhow::Result<Installed> {
    match c {
        Contender::NoopRedirect
        | Contender::ReadingRedirect
        | Contender::WritingRedirect
        | Contender::NoopTx
        | Contender::UnwrappingTx => {
            let program = match c {
                Contender::NoopRedirect => DutXdp::Redirect,
                Contender::ReadingRedirect => DutXdp::RedirectReading,
                Contender::WritingRedirect => DutXdp::RedirectWriting,
                Contender::UnwrappingTx => DutXdp::TxUnwrapping,
                _ => DutXdp::Tx,
            };
            Ok(Installed::Xdp {
                program,
                link: generator
                    .context("the redirect ceiling is an XDP program of the generator's")?
                    .attach_dut(topo, program)?,
            })
        }
        Contender::TcRedirect => {
            let (pass, tc) = generator
                .context("the TC ceiling is a program of the generator's")?
                .attach_tc_ceiling(topo)?;
            Ok(Installed::TcRedirect(pass, tc))
        }
        Contender::TcTrackingRedirect | Contender::TcSlottedRedirect => {
            let program = if c == Contender::TcTrackingRedirect {
                PROG_TC_REDIRECT_TRACKING
            } else {
                PROG_TC_REDIRECT_SLOTTED
            };
            let (pass, floor) = generator
                .context("the translators' floors are programs of the generator's")?
                .attach_tc_floor(topo, program)?;
            Ok(Installed::TcFloor(pass, Box::new(floor)))
        }
        Contender::KernelForward => match generator {
            Some(g) => Ok(Installed::Xdp {
                program: DutXdp::Pass,
                link: g.attach_dut(topo, DutXdp::Pass)?,
            }),
            None => Ok(Installed::Nothing),
        },
        Contender::Gateway | Contender::GatewayTunnel => {
            let syn = syn.context("the gateway needs rules")?;
            let limits = limits_for(syn.rules.len());
            let compiled = compile::compile(&syn.set, &limits.compile_limits())?;
            let tunnel = c == Contender::GatewayTunnel;
            let mut dp = Dataplane::load(&LoadOptions {
                limits,
                conntrack: stateful,
                // The overlay is on the tunnel side: the generator's.
                overlay_v4: if tunnel {
                    "198.18.0.0/16"
                } else {
                    "198.19.0.0/16"
                }
                .parse()?,
                ..Default::default()
            })?;
            dp.apply(&compiled)?;
            topo.dut.run_scoped(|| -> anyhow::Result<()> {
                if tunnel {
                    dp.attach_tunnel("d0", gateway_dataplane::TunnelMss::Auto)?;
                    // As the gateway's default attaches it: TC on this veth (XDP would switch
                    // off the sink's segmentation offload).
                    dp.attach_lan("d1", LanAttach::Auto)?;
                    return Ok(());
                }
                attach_xdp_forwarding(&mut dp)
            })??;
            Ok(Installed::Gateway(Box::new(dp), None))
        }
        Contender::GatewayMasquerade => {
            let syn = syn.context("the gateway needs rules")?;
            let limits = limits_for(syn.rules.len());
            let compiled = compile::compile(&syn.set, &limits.compile_limits())?;
            let mut dp = Dataplane::load(&LoadOptions {
                limits,
                conntrack: true,
                // The synthetic rules' sources are spread over the whole address space: they all
                // stand for peers here.
                overlay_v4: "0.0.0.0/0".parse()?,
                ..Default::default()
            })?;
            dp.apply(&compiled)?;
            let settings = gateway_common::nat::NatSettings {
                port_min: NAT_PORTS.0,
                port_max: NAT_PORTS.1,
                ..Default::default()
            };
            dp.set_masquerade(&gateway_dataplane::Masquerade {
                networks: vec![MASQUERADED.parse()?],
                settings,
            })?;
            topo.dut.run_scoped(|| -> anyhow::Result<()> {
                dp.attach_tunnel("d0", gateway_dataplane::TunnelMss::Fixed(1240))?;
                dp.attach_lan("d1", LanAttach::Auto)?;
                dp.attach_masquerade("d1")?;
                dp.enable_tc_forward(&["d1".to_string()], &["d0".to_string()])
            })??;
            let pass = match generator {
                Some(g) => Some(g.attach_dut(topo, DutXdp::Pass)?),
                None => None,
            };
            Ok(Installed::Gateway(Box::new(dp), pass))
        }
        Contender::NftSets
        | Contender::NftLinear
        | Contender::IptablesLinear
        | Contender::NftMasquerade => {
            let syn = syn.context("rules needed")?;
            let pass = match generator.as_deref_mut() {
                Some(g) => Some(g.attach_dut(topo, DutXdp::Pass)?),
                None => None,
            };
            let path = std::env::temp_dir().join(format!("gwbench-{}.rules", std::process::id()));
            let (text, cmd, cleanup) = match c {
                Contender::NftSets => (nft_sets(syn, stateful), "nft -f", "nft flush ruleset"),
                Contender::NftMasquerade => (
                    format!("{}{}", nft_sets(syn, true), NETBIRD_NAT),
                    "nft -f",
                    "nft flush ruleset",
                ),
                Contender::NftLinear => (nft_linear(syn, stateful), "nft -f", "nft flush ruleset"),
                _ => {
                    let restore = iptables_restore();
                    let cleanup = if restore.contains("legacy") {
                        "iptables-legacy -P FORWARD ACCEPT; iptables-legacy -F FORWARD"
                    } else {
                        "nft flush ruleset"
                    };
                    (iptables_linear(syn, stateful), restore, cleanup)
                }
            };
            std::fs::write(&path, text)?;
            let result = topo.dut_sh(&format!("{cmd} {}", path.display()));
            let _ = std::fs::remove_file(&path);
            if let Err(e) = result {
                // Leave nothing behind for the next contender.
                let _ = topo.dut_sh(cleanup);
                if let (Some(g), Some(pass)) = (generator, pass) {
                    let _ = g.detach_dut(topo, DutXdp::Pass, pass);
                }
                return Err(e);
            }
            Ok(Installed::Rules { pass, cleanup })
        }
        Contender::WgPlainBoringtun
        | Contender::WgGatewayBoringtun
        | Contender::WgNetbirdBoringtun
        | Contender::WgPlainWireguardGo
        | Contender::WgGatewayWireguardGo
        | Contender::WgNetbirdWireguardGo
        | Contender::RelayGateway
        | Contender::RelayGatewayXdp
        | Contender::RelayCoturn
        | Contender::UnderlayQuiet
        | Contender::UnderlayFloodFiltered
        | Contender::UnderlayFloodFilteredTc
        | Contender::UnderlayFloodUnfiltered => anyhow::bail!(
            "{} runs in its own topology (scenarios wireguard, relay, underlay)",
            c.label()
        ),
        Contender::XdpFilter => {
            let syn = syn.context("rules needed")?;
            let mut ports: Vec<u16> = syn
                .rules
                .iter()
                .filter(|r| r.accept)
                .map(|r| r.port)
                .collect();
            ports.sort_unstable();
            ports.dedup();
            // xdp-filter takes one port per command (a process each, ~10 ms).
            anyhow::ensure!(
                ports.len() <= 2_000,
                "xdp-filter loads one port per process; {} ports would take minutes per trial",
                ports.len()
            );
            // One shell: xdp-filter pins its maps in bpffs, which `ip netns exec` mounts anew.
            let mut script = String::from(
                "mount -t bpf bpf /sys/fs/bpf && xdp-filter load d0 --mode native --policy deny",
            );
            for p in ports {
                let _ = write!(script, " && xdp-filter port {p} --proto udp --mode dst");
            }
            topo.dut_sh(&script).context("xdp-filter")?;
            Ok(Installed::XdpFilter)
        }
    }
}

pub fn remove(
    installed: Installed,
    topo: &Topo,
    generator: Option<&mut Generator>,
) -> anyhow::Result<()> {
    match installed {
        Installed::Nothing => Ok(()),
        Installed::Xdp { program, link } => generator
            .context("installed with a generator")?
            .detach_dut(topo, program, link),
        Installed::TcRedirect(pass, tc) => generator
            .context("installed with a generator")?
            .detach_tc_ceiling(topo, (pass, tc)),
        Installed::TcFloor(pass, floor) => generator
            .context("installed with a generator")?
            .detach_tc_floor(topo, (pass, *floor)),
        Installed::Gateway(mut dp, pass) => {
            if std::env::var_os("BENCH_DEBUG").is_some() {
                let c = dp.verdict_counters()?;
                for (i, v) in c.iter().enumerate().filter(|(_, v)| v.packets > 0) {
                    eprintln!("gateway counter {i}: {} packets", v.packets);
                }
            }
            let errors = topo.dut.run_scoped(|| dp.detach_all())?;
            anyhow::ensure!(errors.is_empty(), "detach: {errors:?}");
            match (generator, pass) {
                (Some(g), Some(pass)) => g.detach_dut(topo, DutXdp::Pass, pass),
                _ => Ok(()),
            }
        }
        Installed::Rules { pass, cleanup } => {
            topo.dut_sh(cleanup)?;
            match (generator, pass) {
                (Some(g), Some(pass)) => g.detach_dut(topo, DutXdp::Pass, pass),
                _ => Ok(()),
            }
        }
        Installed::XdpFilter => {
            topo.dut_sh("mount -t bpf bpf /sys/fs/bpf; xdp-filter unload d0 2>/dev/null || ip link set dev d0 xdp off")?;
            Ok(())
        }
    }
}

/// The XDP-forwarding gateway's programs on the DUT's two interfaces (run in the DUT's
/// namespace).
fn attach_xdp_forwarding(dp: &mut Dataplane) -> anyhow::Result<()> {
    dp.attach_lan("d0", LanAttach::XdpNative)?;
    dp.attach_lan("d1", LanAttach::XdpNative)?;
    dp.enable_xdp_forward(&["d0".to_string(), "d1".to_string()])
}

/// The no-op ceiling measured on the gateway's own install, right after the gateway itself:
/// the gateway's programs come off the DUT's interfaces, the redirect goes on and is measured,
/// then the gateway's programs go back on and the gateway is measured again. Returns (ceiling,
/// gateway again). The three measurements lie seconds apart, where the alternation of whole
/// contenders spaces them by program loads and other contenders' runs.
pub fn ceiling_beside_gateway(
    installed: &mut Installed,
    topo: &Topo,
    generator: &mut Generator,
    frames: u32,
) -> anyhow::Result<(Measurement, Measurement)> {
    let Installed::Gateway(dp, None) = installed else {
        anyhow::bail!("not the XDP-forwarding gateway");
    };
    let errors = topo.dut.run_scoped(|| dp.detach_all())?;
    anyhow::ensure!(errors.is_empty(), "detach: {errors:?}");
    let link = generator.attach_dut(topo, DutXdp::Redirect)?;
    let ceiling = topo
        .dedicate_dut_core()
        .and_then(|_| generator.measure(topo, frames));
    generator.detach_dut(topo, DutXdp::Redirect, link)?;
    topo.dut.run_scoped(|| attach_xdp_forwarding(dp))??;
    topo.dedicate_dut_core()?;
    let again = generator.measure(topo, frames)?;
    Ok((ceiling?, again))
}

/// The masqueraded route (the sink's network) and the ports translations may use: the whole
/// unprivileged range, as the kernel's masquerade uses it.
pub const MASQUERADED: &str = "198.19.0.0/24";
pub const NAT_PORTS: (u16, u16) = (1024, 65535);

/// NetBird's routing-peer NAT and MSS rules (client/firewall/nftables/router_linux.go, from the
/// facts in routing-peer.md), with d0 as the tunnel interface.
const NETBIRD_NAT: &str = "table ip netbird {
  chain prerouting {
    type filter hook prerouting priority mangle; policy accept;
    iifname \"d0\" ct state new ip daddr 198.19.0.0/24 meta mark set 0x1bd21
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    meta mark 0x1bd21 masquerade
  }
  chain mssclamp {
    type filter hook forward priority mangle; policy accept;
    oifname \"d0\" tcp flags syn tcp option maxseg size set 1240
  }
}
";

fn proto(syn: &Synthetic) -> &'static str {
    match syn.protocol {
        gateway_policy::Protocol::Tcp => "tcp",
        _ => "udp",
    }
}

/// The forward chain's opening lines (inside `table inet bench`).
fn nft_chain_head(stateful: bool) -> String {
    let mut s = String::from(
        "  chain forward {\n    type filter hook forward priority filter; policy drop;\n",
    );
    if stateful {
        s.push_str("    ct state established,related accept\n");
    }
    s
}

/// NetBird's approach: the rules become set elements, matched with one lookup per set.
/// Elements are added in chunks: one message with 100,000 of them overflows netlink.
fn nft_sets(syn: &Synthetic, stateful: bool) -> String {
    let p = proto(syn);
    let mut s = String::from("table inet bench {\n");
    for name in ["deny", "allow"] {
        let _ = writeln!(
            s,
            "  set {name} {{\n    type ipv4_addr . inet_service\n    flags interval\n  }}"
        );
    }
    s.push_str(&nft_chain_head(stateful));
    let _ = writeln!(
        s,
        "    ip saddr . {p} dport @deny drop\n    ip saddr . {p} dport @allow accept\n  }}\n}}"
    );
    for (name, accept) in [("deny", false), ("allow", true)] {
        let elems: Vec<String> = syn
            .rules
            .iter()
            .filter(|r| r.accept == accept)
            .map(|r| format!("{} . {}", r.src, r.port))
            .collect();
        for chunk in elems.chunks(2_000) {
            let _ = writeln!(
                s,
                "add element inet bench {name} {{ {} }}",
                chunk.join(", ")
            );
        }
    }
    s
}

/// One rule per policy, drops first (a drop beats an accept), first match wins.
fn nft_linear(syn: &Synthetic, stateful: bool) -> String {
    let p = proto(syn);
    let mut s = String::from("table inet bench {\n");
    s.push_str(&nft_chain_head(stateful));
    for accept in [false, true] {
        for r in syn.rules.iter().filter(|r| r.accept == accept) {
            let _ = writeln!(
                s,
                "    ip saddr {} {p} dport {} {}",
                r.src,
                r.port,
                if accept { "accept" } else { "drop" }
            );
        }
    }
    s.push_str("  }\n}\n");
    s
}

fn iptables_linear(syn: &Synthetic, stateful: bool) -> String {
    let p = proto(syn);
    let mut s =
        String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    if stateful {
        s.push_str("-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n");
    }
    for accept in [false, true] {
        for r in syn.rules.iter().filter(|r| r.accept == accept) {
            let _ = writeln!(
                s,
                "-A FORWARD -s {} -p {p} --dport {} -j {}",
                r.src,
                r.port,
                if accept { "ACCEPT" } else { "DROP" }
            );
        }
    }
    s.push_str("COMMIT\n");
    s
}
