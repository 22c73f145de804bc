//! The seed-000 lab: one namespace per host, all connected to a gateway namespace. Overlay hosts
//! (control plane, orchestration, the three demo groups, the internal DNS) reach the gateway
//! over veths that stand in for the tunnel interface (TC programs); a LAN resource sits behind
//! the gateway's LAN interface (XDP).
//!
//! ```text
//!  cp1 100.64.10.1  ──┐
//!  orch1 100.64.20.1 ─┤  t-* (tunnel, tc)  ┌────┐  lan0 (xdp)
//!  win1/lin1/web1  ───┼──────────────────── │ gw │ ─────────────── lan1 198.18.10.10
//!  dns 100.64.1.53 ───┘                     └────┘  198.18.10.1/24
//! ```

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::Context as _;

use crate::netns::{Netns, remove_stale, veth};

pub const NETNS_PREFIX: &str = "gwlab";
/// The seed's policies (examples/policy.yaml), embedded so the demo runs from the binary alone.
pub const SEED_POLICY: &str = include_str!("../../examples/policy.yaml");
/// The gateway's address on every tunnel-side link (the seed's "100.64.0.1 - gateway").
pub const GATEWAY_OVERLAY_ADDR: &str = "100.64.0.1";
/// The gateway's IPv6 overlay address, for tests that add IPv6 ([`Lab::add_ipv6_peer`]).
pub const GATEWAY_OVERLAY_ADDR6: &str = "fd00:64::1";
pub const GATEWAY_LAN_ADDR: &str = "198.18.10.1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Tunnel,
    Lan,
}

pub struct HostSpec {
    pub name: &'static str,
    pub role: &'static str,
    pub addr: &'static str,
    pub side: Side,
}

pub const SEED_HOSTS: [HostSpec; 7] = [
    HostSpec {
        name: "cp1",
        role: "control-plane",
        addr: "100.64.10.1",
        side: Side::Tunnel,
    },
    HostSpec {
        name: "orch1",
        role: "orchestration",
        addr: "100.64.20.1",
        side: Side::Tunnel,
    },
    HostSpec {
        name: "win1",
        role: "demo-windows",
        addr: "100.64.100.1",
        side: Side::Tunnel,
    },
    HostSpec {
        name: "lin1",
        role: "demo-linux",
        addr: "100.64.101.1",
        side: Side::Tunnel,
    },
    HostSpec {
        name: "web1",
        role: "demo-webapp",
        addr: "100.64.102.1",
        side: Side::Tunnel,
    },
    HostSpec {
        name: "dns",
        role: "internal DNS",
        addr: "100.64.1.53",
        side: Side::Tunnel,
    },
    HostSpec {
        name: "lan1",
        role: "LAN resource",
        addr: "198.18.10.10",
        side: Side::Lan,
    },
];

pub struct Host {
    pub name: &'static str,
    pub role: &'static str,
    pub addr: Ipv4Addr,
    pub ns: Netns,
    /// The gateway-side interface of this host's link.
    pub gw_if: String,
}

pub struct Lab {
    pub gw: Netns,
    pub hosts: Vec<Host>,
    pub dir: PathBuf,
    /// A bpffs of the lab's own, where its gateway pins the data plane (gone with the lab).
    pub bpffs: PathBuf,
}

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

impl Lab {
    pub fn seed() -> anyhow::Result<Lab> {
        remove_stale(NETNS_PREFIX);
        let id = format!(
            "{NETNS_PREFIX}{}x{}",
            std::process::id(),
            LAB_COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let dir = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&dir).context("lab directory")?;
        let gw = Netns::create(&format!("{id}-gw"))?;
        let bpffs = dir.join("bpffs");
        gateway_dataplane::pins::mount_bpffs(&bpffs)?;
        // From here on, dropping the lab undoes everything, also on an error below.
        let mut lab = Lab {
            gw,
            hosts: Vec::new(),
            dir,
            bpffs,
        };
        lab.gw.sysctl("net.ipv4.ip_forward", "1")?;
        lab.gw.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        for spec in &SEED_HOSTS {
            let ns = Netns::create(&format!("{id}-{}", spec.name))?;
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
            let gw_if = match spec.side {
                Side::Tunnel => format!("t-{}", spec.name),
                Side::Lan => "lan0".to_string(),
            };
            veth(&lab.gw, &gw_if, &ns, "eth0")?;
            match spec.side {
                Side::Tunnel => {
                    lab.gw.ip(&[
                        "addr",
                        "add",
                        &format!("{GATEWAY_OVERLAY_ADDR}/32"),
                        "dev",
                        &gw_if,
                    ])?;
                    lab.gw
                        .ip(&["route", "add", &format!("{}/32", spec.addr), "dev", &gw_if])?;
                    ns.ip(&["addr", "add", &format!("{}/32", spec.addr), "dev", "eth0"])?;
                    ns.ip(&[
                        "route",
                        "add",
                        "default",
                        "via",
                        GATEWAY_OVERLAY_ADDR,
                        "dev",
                        "eth0",
                        "onlink",
                    ])?;
                }
                Side::Lan => {
                    lab.gw.ip(&[
                        "addr",
                        "add",
                        &format!("{GATEWAY_LAN_ADDR}/24"),
                        "dev",
                        &gw_if,
                    ])?;
                    ns.ip(&["addr", "add", &format!("{}/24", spec.addr), "dev", "eth0"])?;
                    ns.ip(&["route", "add", "default", "via", GATEWAY_LAN_ADDR])?;
                }
            }
            lab.hosts.push(Host {
                name: spec.name,
                role: spec.role,
                addr: spec.addr.parse()?,
                ns,
                gw_if,
            });
        }
        Ok(lab)
    }

    /// Gives the tunnel-side `host` the IPv6 overlay address `addr` beside its IPv4 one (the
    /// lab starts with IPv6 off): IPv6 on in its namespace and the gateway's, the gateway's
    /// IPv6 overlay address on the host's link, a route to the host, and the host's default
    /// route through the gateway.
    pub fn add_ipv6_peer(&self, host: &Host, addr: &str) -> anyhow::Result<()> {
        for ns in [&self.gw, &host.ns] {
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "0")?;
        }
        let gw_if = &host.gw_if;
        self.gw.ip_line(&format!(
            "-6 addr add {GATEWAY_OVERLAY_ADDR6}/128 dev {gw_if} nodad"
        ))?;
        self.gw
            .ip_line(&format!("-6 route add {addr}/128 dev {gw_if}"))?;
        host.ns
            .ip_line(&format!("-6 addr add {addr}/128 dev eth0 nodad"))?;
        host.ns.ip_line(&format!(
            "-6 route add default via {GATEWAY_OVERLAY_ADDR6} dev eth0 onlink"
        ))?;
        Ok(())
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no lab host {name}"))
    }

    /// Writes the policy and a gateway config for this lab; returns the config path.
    pub fn write_config(&self, policy_yaml: &str, metrics_addr: &str) -> anyhow::Result<PathBuf> {
        self.write_config_with(policy_yaml, metrics_addr, "xdp-native")
    }

    /// As [`Lab::write_config`], with the LAN interface attached as `lan_attach`.
    pub fn write_config_with(
        &self,
        policy_yaml: &str,
        metrics_addr: &str,
        lan_attach: &str,
    ) -> anyhow::Result<PathBuf> {
        let policy = self.dir.join("policy.yaml");
        std::fs::write(&policy, policy_yaml)?;
        self.write_gateway_config(
            &format!("policy: {}\n", policy.display()),
            metrics_addr,
            lan_attach,
        )
    }

    /// As [`Lab::write_config`], with more top-level configuration appended (YAML).
    pub fn write_config_extra(
        &self,
        policy_yaml: &str,
        metrics_addr: &str,
        extra_yaml: &str,
    ) -> anyhow::Result<PathBuf> {
        let path = self.write_config(policy_yaml, metrics_addr)?;
        let mut cfg = std::fs::read_to_string(&path)?;
        cfg.push_str(extra_yaml);
        std::fs::write(&path, cfg)?;
        Ok(path)
    }

    /// A gateway config with no policy file: the policy comes from `--management-url`.
    pub fn write_management_config(&self, metrics_addr: &str) -> anyhow::Result<PathBuf> {
        self.write_gateway_config("", metrics_addr, "xdp-native")
    }

    fn write_gateway_config(
        &self,
        policy_line: &str,
        metrics_addr: &str,
        lan_attach: &str,
    ) -> anyhow::Result<PathBuf> {
        let mut cfg = format!(
            "{policy_line}metrics_addr: {metrics_addr}\npin_dir: {}\ninterfaces:\n  tunnel:\n",
            self.pin_dir().display()
        );
        for h in self.hosts.iter().filter(|h| h.gw_if.starts_with("t-")) {
            cfg.push_str(&format!("    - name: {}\n", h.gw_if));
        }
        cfg.push_str(&format!(
            "  lan:\n    - name: lan0\n      attach: {lan_attach}\n"
        ));
        let path = self.dir.join("gateway.yaml");
        std::fs::write(&path, cfg)?;
        Ok(path)
    }

    pub fn policy_path(&self) -> PathBuf {
        self.dir.join("policy.yaml")
    }

    /// Where the lab's gateway pins its data plane.
    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs.join("gateway")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The pins go with the bpffs: programs the lab's gateway left in force detach.
        gateway_dataplane::pins::unmount_bpffs(&self.bpffs);
        let _ = std::fs::remove_dir_all(&self.dir);
        // Netns guards in `gw` and `hosts` delete the namespaces as they drop.
    }
}
