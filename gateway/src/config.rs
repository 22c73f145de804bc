//! The gateway's configuration file (YAML): which interfaces to protect, where the policy comes
//! from, conntrack settings and table capacities.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use gateway_common::{maps, settings::Timeouts};
use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

pub use gateway_dataplane::{LanAttach, LimitsConfig};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Policy file (YAML, see examples/policy.yaml). Absent when the policy comes from a
    /// management service (`gateway run --management-url`).
    #[serde(default)]
    pub policy: Option<PathBuf>,
    #[serde(default)]
    pub interfaces: Interfaces,
    #[serde(default)]
    pub overlay: Overlay,
    #[serde(default)]
    pub conntrack: Conntrack,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Source NAT toward the LAN (NetBird's route `masquerade`): traffic from the overlay to these
    /// networks leaves a LAN interface with that interface's address.
    #[serde(default)]
    pub masquerade: Option<MasqueradeConfig>,
    /// The WireGuard interface the gateway terminates tunnels on (it becomes a tunnel interface
    /// of its own). Absent: the gateway filters tunnel interfaces that something else made.
    #[serde(default)]
    pub wireguard: Option<WireGuardConfig>,
    /// Rates of the underlay filter (`interfaces.underlay`).
    #[serde(default)]
    pub underlay_filter: UnderlayFilter,
    /// Prometheus endpoint; none when absent.
    #[serde(default)]
    pub metrics_addr: Option<SocketAddr>,
    /// Where the data plane is pinned (a bpffs folder): it keeps enforcing the last policy when
    /// the process exits, crashes or restarts, and the next run adopts it. `null` for a data
    /// plane that is removed when the process exits.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: Option<PathBuf>,
}

fn default_pin_dir() -> Option<PathBuf> {
    Some(PathBuf::from(maps::DEFAULT_PIN_ROOT))
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Interfaces {
    /// Tunnel interfaces (wg0, a boringtun TUN): decrypted overlay traffic, TC ingress + egress.
    #[serde(default)]
    pub tunnel: Vec<TunnelInterface>,
    /// LAN interfaces: XDP.
    #[serde(default)]
    pub lan: Vec<LanInterface>,
    /// kernel (default): accepted traffic from the tunnel climbs the stack and the kernel
    /// forwards it. tc: traffic whose route leads out of a LAN interface is forwarded by the
    /// tunnel's TC program (FIB lookup, the kernel's neighbour entry, redirect), and so is
    /// traffic from a LAN interface attached at TC whose route leads into a tunnel; what it
    /// cannot finish (TTL, MTU, a route elsewhere) still goes to the kernel.
    #[serde(default)]
    pub tunnel_forward: TunnelForward,
    /// Underlay interfaces (facing the Internet) in front of the WireGuard port: only
    /// well-formed WireGuard messages reach it, handshake initiations at bounded rates (XDP,
    /// or TC ingress on a veth).
    #[serde(default)]
    pub underlay: Vec<UnderlayInterface>,
    /// How TC programs attach: auto (default: tcx links on Linux 6.6+, cls_bpf filters under
    /// a clsact qdisc before) or netlink (filters on any kernel). Both outlive the process when
    /// the data plane is pinned.
    #[serde(default)]
    pub tc_links: gateway_dataplane::attach::TcLinks,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UnderlayInterface {
    pub name: String,
    /// auto (default: native XDP, except TC ingress on a veth, where XDP would switch off the
    /// peer's UDP GSO), xdp-native, xdp-generic or tc.
    #[serde(default)]
    pub attach: LanAttach,
    /// UDP ports to protect; default: the WireGuard interface's listen port.
    #[serde(default)]
    pub ports: Vec<u16>,
}

/// Handshake initiation rates of the underlay filter.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UnderlayFilter {
    /// From one source address (default WireGuard's own: 20 a second, bursts of 5).
    #[serde(default = "default_per_source")]
    pub per_source: RateConfig,
    /// From all sources together, per CPU (default 2,000 a second, bursts of 200).
    #[serde(default = "default_per_cpu")]
    pub per_cpu: RateConfig,
}

impl Default for UnderlayFilter {
    fn default() -> Self {
        UnderlayFilter {
            per_source: default_per_source(),
            per_cpu: default_per_cpu(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateConfig {
    /// 0: unlimited.
    pub per_second: u32,
    pub burst: u32,
}

fn default_per_source() -> RateConfig {
    use gateway_common::underlay::*;
    RateConfig {
        per_second: DEFAULT_PER_SOURCE_PER_SECOND,
        burst: DEFAULT_PER_SOURCE_BURST,
    }
}

fn default_per_cpu() -> RateConfig {
    use gateway_common::underlay::*;
    RateConfig {
        per_second: DEFAULT_PER_CPU_PER_SECOND,
        burst: DEFAULT_PER_CPU_BURST,
    }
}

impl UnderlayFilter {
    pub fn settings(&self) -> gateway_common::underlay::UnderlaySettings {
        use gateway_common::underlay::Rate;
        gateway_common::underlay::UnderlaySettings {
            per_source: Rate::new(self.per_source.per_second, self.per_source.burst),
            per_cpu: Rate::new(self.per_cpu.per_second, self.per_cpu.burst),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelForward {
    #[default]
    Kernel,
    Tc,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelInterface {
    pub name: String,
    /// TCP SYNs crossing the interface (either way) announce at most what it carries:
    /// `auto` (default: its MTU at attach minus 40 for IPv4, 60 for IPv6; 1240 at NetBird's
    /// 1280), `off`, or an IPv4 MSS (IPv6 gets 20 less).
    #[serde(default)]
    pub mss_clamp: MssClampConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum MssClampConfig {
    Mode(MssClampMode),
    /// An IPv4 MSS, at least [`MIN_MSS`].
    Fixed(u16),
    /// YAML reads a bare `off` (and `no`, `false`) as false: off; true is `auto`.
    Switch(bool),
}

impl Default for MssClampConfig {
    fn default() -> Self {
        MssClampConfig::Mode(MssClampMode::Auto)
    }
}

/// The smallest MSS every IPv4 host must accept (RFC 9293).
pub const MIN_MSS: u16 = 536;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MssClampMode {
    Auto,
    Off,
}

impl MssClampConfig {
    pub fn tunnel_mss(self) -> gateway_dataplane::TunnelMss {
        use gateway_dataplane::TunnelMss;
        match self {
            MssClampConfig::Mode(MssClampMode::Auto) | MssClampConfig::Switch(true) => {
                TunnelMss::Auto
            }
            MssClampConfig::Mode(MssClampMode::Off) | MssClampConfig::Switch(false) => {
                TunnelMss::Off
            }
            MssClampConfig::Fixed(v) => TunnelMss::Fixed(v),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LanInterface {
    pub name: String,
    /// auto (default: native XDP, TC on a veth), xdp-native; xdp-generic or tc as fallbacks for
    /// drivers without native XDP.
    #[serde(default)]
    pub attach: LanAttach,
    /// kernel (default): accepted traffic goes up the stack. xdp: accepted, policed traffic whose
    /// route leads to another `forward: xdp` interface is forwarded in XDP (needs native XDP).
    #[serde(default)]
    pub forward: Forwarding,
}

impl LanInterface {
    /// The mode to attach with: as configured, except that XDP forwarding needs the XDP program
    /// on the interface, so `auto` with `forward: xdp` is native XDP even on a veth.
    pub fn attach_mode(&self) -> LanAttach {
        match (self.forward, self.attach) {
            (Forwarding::Xdp, LanAttach::Auto) => LanAttach::XdpNative,
            (_, a) => a,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    #[default]
    Kernel,
    Xdp,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MasqueradeConfig {
    /// Destination networks (IPv4 or IPv6) whose traffic from the overlay is masqueraded.
    pub networks: Vec<ipnet::IpNet>,
    /// Source ports of translations, `first-last` (default 20000-29999). The gateway reserves
    /// them from the host's own sockets (net.ipv4.ip_local_reserved_ports).
    #[serde(default = "default_nat_ports")]
    pub ports: String,
}

fn default_nat_ports() -> String {
    format!(
        "{}-{}",
        gateway_common::nat::DEFAULT_PORT_MIN,
        gateway_common::nat::DEFAULT_PORT_MAX
    )
}

impl MasqueradeConfig {
    pub fn port_range(&self) -> anyhow::Result<(u16, u16)> {
        let (a, b) = self
            .ports
            .split_once('-')
            .with_context(|| format!("masquerade.ports {:?}: expected first-last", self.ports))?;
        let (a, b): (u16, u16) = (
            a.trim().parse().context("masquerade.ports: first port")?,
            b.trim().parse().context("masquerade.ports: last port")?,
        );
        if a < 1024 || a > b {
            bail!(
                "masquerade.ports {}: a range of unprivileged ports (1024-65535), first ≤ last",
                self.ports
            );
        }
        Ok((a, b))
    }

    pub fn dataplane(&self) -> anyhow::Result<gateway_dataplane::Masquerade> {
        let (port_min, port_max) = self.port_range()?;
        Ok(gateway_dataplane::Masquerade {
            networks: self.networks.clone(),
            settings: gateway_common::nat::NatSettings {
                port_min,
                port_max,
                ..Default::default()
            },
        })
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WireGuardConfig {
    /// auto (default: the kernel's WireGuard where it exists, else userspace), kernel, userspace
    /// (boringtun in this process) or external (an interface something else runs; only filtered).
    #[serde(default)]
    pub backend: gateway_wireguard::BackendChoice,
    #[serde(default = "default_wg_interface")]
    pub interface: String,
    #[serde(default = "default_wg_port")]
    pub listen_port: u16,
    /// Default: the network map's `PeerConfig.mtu` with a management service, else 1280.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// The interface's overlay address with its network's prefix (file mode; a management
    /// service assigns it otherwise), e.g. 100.64.0.1/10.
    #[serde(default)]
    pub address: Option<ipnet::IpNet>,
    #[serde(default)]
    pub address_v6: Option<ipnet::IpNet>,
    /// Static peers (file mode; with a management service they come from the network map).
    #[serde(default)]
    pub peers: Vec<StaticPeer>,
}

fn default_wg_interface() -> String {
    gateway_wireguard::DEFAULT_INTERFACE.to_string()
}

fn default_wg_port() -> u16 {
    gateway_wireguard::DEFAULT_LISTEN_PORT
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StaticPeer {
    pub public_key: String,
    pub allowed_ips: Vec<ipnet::IpNet>,
    /// host:port of the peer; absent: learned when the peer connects.
    #[serde(default)]
    pub endpoint: Option<std::net::SocketAddr>,
    /// Persistent keepalive in seconds (default 25, NetBird's; 0: off).
    #[serde(default)]
    pub keepalive: Option<u16>,
}

impl StaticPeer {
    pub fn spec(&self) -> gateway_wireguard::PeerSpec {
        gateway_wireguard::PeerSpec {
            public_key: self.public_key.clone(),
            allowed_ips: self.allowed_ips.clone(),
            endpoint: self.endpoint,
            keepalive: Some(
                self.keepalive
                    .unwrap_or(gateway_wireguard::DEFAULT_KEEPALIVE_SECS),
            ),
        }
    }
}

impl WireGuardConfig {
    pub fn mtu(&self, from_map: Option<u32>) -> u32 {
        self.mtu
            .or(from_map)
            .unwrap_or(gateway_wireguard::DEFAULT_MTU)
    }

    /// The configured addresses (file mode).
    pub fn addresses(&self) -> Vec<ipnet::IpNet> {
        self.address.into_iter().chain(self.address_v6).collect()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Overlay {
    /// LAN traffic toward these networks is policed; other LAN traffic is not the gateway's.
    pub ipv4: Ipv4Net,
    #[serde(default)]
    pub ipv6: Option<Ipv6Net>,
}

impl Default for Overlay {
    fn default() -> Self {
        Overlay {
            ipv4: "100.64.0.0/10".parse().expect("constant"),
            ipv6: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Conntrack {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Idle timeouts in seconds (the kernel's own struct: the file maps onto it directly).
    #[serde(default)]
    pub timeouts: Timeouts,
}

fn yes() -> bool {
    true
}

impl Default for Conntrack {
    fn default() -> Self {
        Conntrack {
            enabled: true,
            timeouts: Timeouts::default(),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let mut cfg: Config = serde_saphyr::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if let (Some(policy), Some(dir)) = (cfg.policy.as_mut(), path.parent())
            && policy.is_relative()
        {
            *policy = dir.join(&*policy);
        }
        cfg.validate()
            .with_context(|| format!("{}", path.display()))?;
        // The WireGuard interface is a tunnel interface like any other (unless listed already,
        // with settings of its own).
        if let Some(wg) = &cfg.wireguard
            && !cfg.interfaces.tunnel.iter().any(|t| t.name == wg.interface)
        {
            cfg.interfaces.tunnel.push(TunnelInterface {
                name: wg.interface.clone(),
                mss_clamp: MssClampConfig::default(),
            });
        }
        Ok(cfg)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.interfaces.tunnel.is_empty()
            && self.interfaces.lan.is_empty()
            && self.interfaces.underlay.is_empty()
            && self.wireguard.is_none()
        {
            bail!("interfaces: name at least one tunnel or lan interface");
        }
        if let Some(wg) = &self.wireguard {
            if wg.interface.is_empty() || wg.interface.len() > 15 {
                bail!(
                    "wireguard.interface {:?}: an interface name of 1 to 15 bytes",
                    wg.interface
                );
            }
            if let Some(mtu) = wg.mtu
                && !(gateway_wireguard::MIN_MTU..=9000).contains(&mtu)
            {
                bail!(
                    "wireguard.mtu {mtu}: between {} and 9000",
                    gateway_wireguard::MIN_MTU
                );
            }
            if wg.address.is_some_and(|a| !a.addr().is_ipv4())
                || wg.address_v6.is_some_and(|a| !a.addr().is_ipv6())
            {
                bail!("wireguard: address is IPv4, address_v6 is IPv6");
            }
            let specs: Vec<_> = wg.peers.iter().map(StaticPeer::spec).collect();
            gateway_wireguard::PeerSet::check(&specs, None).context("wireguard.peers")?;
            if wg.backend == gateway_wireguard::BackendChoice::External
                && (!wg.peers.is_empty() || wg.address.is_some() || wg.address_v6.is_some())
            {
                bail!(
                    "wireguard: backend external filters an interface that something else configures; peers and addresses belong there"
                );
            }
        }
        let l = &self.limits;
        for (name, v) in [
            ("acl_chunks", l.acl_chunks),
            ("acl_verdicts", l.acl_verdicts),
            ("acl_v6_prefixes", l.acl_v6_prefixes),
            ("rules", l.rules),
            ("conntrack_entries", l.conntrack_entries),
            ("fragment_entries", l.fragment_entries),
        ] {
            if v == 0 {
                bail!("limits.{name} must be positive");
            }
        }
        for t in &self.interfaces.tunnel {
            if let MssClampConfig::Fixed(v) = t.mss_clamp
                && v < MIN_MSS
            {
                bail!(
                    "interfaces.tunnel {}: mss_clamp {v} is below {MIN_MSS}, the smallest MSS every IPv4 host must accept",
                    t.name
                );
            }
        }
        if let Some(m) = &self.masquerade {
            m.port_range()?;
            if !m.networks.is_empty() && self.interfaces.lan.is_empty() {
                bail!(
                    "masquerade: networks are masqueraded behind LAN interfaces; name at least one"
                );
            }
        }
        for u in &self.interfaces.underlay {
            if self.interfaces.lan.iter().any(|l| l.name == u.name)
                || self.interfaces.tunnel.iter().any(|t| t.name == u.name)
            {
                bail!(
                    "interfaces.underlay {}: an interface is either underlay, LAN or tunnel (one XDP program per interface)",
                    u.name
                );
            }
            if u.ports.is_empty() && self.wireguard.is_none() {
                bail!(
                    "interfaces.underlay {}: name its WireGuard ports (there is no wireguard section to take the port from)",
                    u.name
                );
            }
        }
        for lan in &self.interfaces.lan {
            if lan.forward == Forwarding::Xdp
                && !matches!(lan.attach, LanAttach::XdpNative | LanAttach::Auto)
            {
                bail!(
                    "interfaces.lan {}: forward: xdp needs attach: xdp-native",
                    lan.name
                );
            }
        }
        if l.acl_chunks > 1 << 24 {
            bail!("limits.acl_chunks is at most {}", 1 << 24);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_example_config_parses() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/gateway.yaml"
        ));
        let cfg = Config::load(path).expect("deploy/gateway.yaml");
        assert_eq!(cfg.interfaces.tunnel[0].name, "wg0");
        assert_eq!(cfg.interfaces.lan[0].attach, LanAttach::Auto);
        assert_eq!(cfg.interfaces.lan[0].attach_mode(), LanAttach::Auto);
        let mut xdp_forward = cfg.interfaces.lan[0].clone();
        xdp_forward.forward = Forwarding::Xdp;
        assert_eq!(xdp_forward.attach_mode(), LanAttach::XdpNative);
        xdp_forward.attach = LanAttach::XdpGeneric;
        assert_eq!(xdp_forward.attach_mode(), LanAttach::XdpGeneric);
        assert_eq!(cfg.overlay.ipv4.to_string(), "100.64.0.0/10");
        assert_eq!(cfg.limits.acl_verdicts, 131072);
        assert_eq!(cfg.metrics_addr, Some("127.0.0.1:9464".parse().unwrap()));
    }

    #[test]
    fn unknown_fields_and_empty_interfaces_are_refused() {
        let dir = std::env::temp_dir().join(format!("gwcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.yaml");
        std::fs::write(
            &p,
            "policy: p.yaml\ninterfaces:\n  tunnel:\n    - name: wg0\n      mtu: 1400\n",
        )
        .unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("c.yaml") && e.contains("mtu"), "{e}");
        std::fs::write(&p, "policy: p.yaml\n").unwrap();
        let e = format!("{:#}", Config::load(&p).unwrap_err());
        assert!(e.contains("at least one tunnel or lan interface"), "{e}");
        std::fs::write(
            &p,
            "policy: p.yaml\ninterfaces:\n  lan:\n    - name: eth1\n      attach: driverish\n",
        )
        .unwrap();
        assert!(Config::load(&p).is_err());
        // A relative policy path is taken relative to the config file.
        std::fs::write(
            &p,
            "policy: p.yaml\ninterfaces:\n  lan:\n    - name: eth1\n",
        )
        .unwrap();
        assert_eq!(Config::load(&p).unwrap().policy, Some(dir.join("p.yaml")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mss_clamp_is_auto_off_or_a_sane_value() {
        let dir = std::env::temp_dir().join(format!("gwcfg-mss-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.yaml");
        let load = |clamp: &str| {
            let line = if clamp.is_empty() {
                String::new()
            } else {
                format!("      mss_clamp: {clamp}\n")
            };
            std::fs::write(
                &p,
                format!("policy: p.yaml\ninterfaces:\n  tunnel:\n    - name: wg0\n{line}"),
            )
            .unwrap();
            Config::load(&p)
                .map(|c| c.interfaces.tunnel[0].mss_clamp.tunnel_mss())
                .map_err(|e| format!("{e:#}"))
        };
        use gateway_dataplane::TunnelMss;
        assert_eq!(load(""), Ok(TunnelMss::Auto));
        assert_eq!(load("auto"), Ok(TunnelMss::Auto));
        assert_eq!(load("off"), Ok(TunnelMss::Off));
        assert_eq!(load("\"off\""), Ok(TunnelMss::Off));
        assert_eq!(load("false"), Ok(TunnelMss::Off));
        assert_eq!(load("1200"), Ok(TunnelMss::Fixed(1200)));
        let e = load("500").unwrap_err();
        assert!(e.contains("below 536"), "{e}");
        assert!(load("sometimes").is_err());
        assert!(load("70000").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_wireguard_section_makes_its_interface_a_tunnel_and_checks_its_peers() {
        let dir = std::env::temp_dir().join(format!("gwcfg-wg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.yaml");
        let key = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
        let load = |wg: &str| {
            std::fs::write(&p, format!("policy: p.yaml\nwireguard:\n{wg}")).unwrap();
            Config::load(&p).map_err(|e| format!("{e:#}"))
        };
        let cfg = load(&format!("  address: 100.64.0.1/10\n  peers:\n    - public_key: {key}\n      allowed_ips: [100.64.0.2/32]\n")).unwrap();
        let wg = cfg.wireguard.as_ref().unwrap();
        assert_eq!(
            (
                wg.interface.as_str(),
                wg.listen_port,
                wg.mtu(None),
                wg.backend
            ),
            ("wt0", 51820, 1280, gateway_wireguard::BackendChoice::Auto)
        );
        assert_eq!(
            cfg.interfaces
                .tunnel
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>(),
            vec!["wt0"]
        );
        assert_eq!(wg.peers[0].spec().keepalive, Some(25));
        assert_eq!(
            wg.mtu(Some(1400)),
            1400,
            "the map's MTU when the file names none"
        );
        let e = load("  peers:\n    - public_key: nope\n      allowed_ips: []\n").unwrap_err();
        assert!(e.contains("wireguard.peers"), "{e}");
        let e = load(&format!(
            "  backend: external\n  peers:\n    - public_key: {key}\n      allowed_ips: []\n"
        ))
        .unwrap_err();
        assert!(e.contains("external"), "{e}");
        let e = load("  mtu: 200\n").unwrap_err();
        assert!(e.contains("mtu"), "{e}");
        let e = load("  address: fd00::1/64\n").unwrap_err();
        assert!(e.contains("address is IPv4"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn underlay_interfaces_take_any_attach_mode_and_need_a_port() {
        let dir = std::env::temp_dir().join(format!("gwcfg-ul-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.yaml");
        let load = |body: &str| {
            std::fs::write(&p, format!("policy: p.yaml\n{body}")).unwrap();
            Config::load(&p).map_err(|e| format!("{e:#}"))
        };
        let cfg = load("wireguard: {}\ninterfaces:\n  underlay:\n    - name: eth0\n").unwrap();
        let s = cfg.underlay_filter.settings();
        assert_eq!(
            (s.per_source.interval_ns, s.per_source.tolerance_ns),
            (50_000_000, 200_000_000),
            "20 a second, bursts of 5"
        );
        assert!(
            load("interfaces:\n  underlay:\n    - name: eth0\n")
                .unwrap_err()
                .contains("ports")
        );
        assert!(load("interfaces:\n  underlay:\n    - name: eth0\n      ports: [51820]\n").is_ok());
        let tc = load(
            "interfaces:\n  underlay:\n    - name: eth0\n      ports: [51820]\n      attach: tc\n",
        )
        .unwrap();
        assert_eq!(tc.interfaces.underlay[0].attach, LanAttach::Tc);
        let e = load("interfaces:\n  lan:\n    - name: eth0\n  underlay:\n    - name: eth0\n      ports: [51820]\n").unwrap_err();
        assert!(e.contains("either underlay, LAN or tunnel"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
