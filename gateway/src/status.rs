//! `gateway status`: what the running gateway reports at /status, as JSON or a table.

use std::net::SocketAddr;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use gateway_common::stats::{HOOK_NAMES, HOOKS, REASON_NAMES, reason, stats_index, verdict_label};
use gateway_dataplane::Dataplane;

#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub policy_file: String,
    pub generation: u32,
    pub rules: usize,
    pub last_reload: String,
    pub attachments: Vec<AttachmentReport>,
    pub maps: Vec<MapReport>,
    pub counters: Vec<CounterReport>,
    pub policies: Vec<PolicyCounter>,
    /// Present when the policy comes from a management service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub management: Option<ManagementReport>,
    /// Where the data plane is pinned (it stays in force when this process exits); none when it
    /// lives and dies with the process.
    #[serde(default)]
    pub pin_dir: Option<String>,
    /// The generation this process found in force and adopted at start, if it adopted one.
    #[serde(default)]
    pub adopted_generation: Option<u32>,
    /// The WireGuard interface this gateway terminates: backend, key, peers with handshake age
    /// and bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<gateway_wireguard::TunnelReport>,
    /// The underlay filter's counters by reason (non-zero ones).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub underlay: Vec<UnderlayCounter>,
    /// The masquerade's port range: ports in use toward the busiest destination (a port is
    /// taken per destination, so that one runs out first) of the range's size. Absent while
    /// nothing is masqueraded, or before the first sweep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_ports: Option<NatPorts>,
    /// Live flows and translations the flow tables gave up for new ones (every table, zero
    /// or not: a count that grows says the table is too small for the traffic).
    #[serde(default)]
    pub evicted: Vec<EvictionCounter>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NatPorts {
    pub busiest_destination: u64,
    pub range: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct EvictionCounter {
    pub table: String,
    /// Whether the entries given up had been answered (`answered`) or not (`unanswered`).
    pub entry: String,
    pub count: u64,
}

impl Report {
    /// A map's fill level, by its name in `maps`.
    pub fn map(&self, name: &str) -> Option<&MapReport> {
        self.maps.iter().find(|m| m.map == name)
    }

    /// Packets counted at `direction` (a hook) for `reason`.
    pub fn packets(&self, direction: &str, reason: &str) -> u64 {
        self.counters
            .iter()
            .filter(|c| c.direction == direction && c.reason == reason)
            .map(|c| c.packets)
            .sum()
    }

    /// Packets counted for `reason` at any hook.
    pub fn packets_for(&self, reason: &str) -> u64 {
        self.counters
            .iter()
            .filter(|c| c.reason == reason)
            .map(|c| c.packets)
            .sum()
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct UnderlayCounter {
    pub reason: String,
    pub dropped: bool,
    pub packets: u64,
    pub bytes: u64,
}

/// The management client's view: whether it is synced, to which map, as which address.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ManagementReport {
    pub url: String,
    pub connected: bool,
    /// Serial of the network map in force (0: none yet).
    pub serial: u64,
    /// This gateway's overlay address as management assigned it.
    pub overlay_address: Option<String>,
    /// Why the management service refused this gateway (peer deleted, key refused), if it did:
    /// a deny-all policy is in force since then.
    #[serde(default)]
    pub refused: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AttachmentReport {
    pub interface: String,
    pub program: String,
    pub mode: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct MapReport {
    pub map: String,
    pub entries: u64,
    pub capacity: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CounterReport {
    pub direction: String,
    pub verdict: String,
    pub reason: String,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PolicyCounter {
    pub policy: String,
    pub packets: u64,
    pub bytes: u64,
}

pub fn report(
    dp: &Dataplane,
    policy_file: &str,
    last_reload: &str,
    management: Option<ManagementReport>,
    wireguard: Option<gateway_wireguard::TunnelReport>,
) -> anyhow::Result<Report> {
    let counters = dp.verdict_counters()?;
    let mut out = Vec::new();
    for hook in 0..HOOKS {
        for r in 0..reason::SLOTS {
            let c = counters[stats_index(hook, r) as usize];
            if c.packets > 0 {
                out.push(CounterReport {
                    direction: HOOK_NAMES[hook as usize].into(),
                    verdict: verdict_label(r).into(),
                    reason: REASON_NAMES[r as usize].into(),
                    packets: c.packets,
                    bytes: c.bytes,
                });
            }
        }
    }
    Ok(Report {
        policy_file: policy_file.to_string(),
        generation: dp.generation(),
        rules: dp.active_rules().len(),
        last_reload: last_reload.to_string(),
        pin_dir: dp.pin_root().map(|p| p.display().to_string()),
        adopted_generation: dp.adopted(),
        attachments: dp
            .attachments()
            .iter()
            .map(|a| AttachmentReport {
                interface: a.interface.clone(),
                program: a.program.into(),
                mode: a.mode.clone(),
            })
            .collect(),
        maps: dp
            .fill_levels()
            .into_iter()
            .map(|(m, e, c)| MapReport {
                map: m.into(),
                entries: e,
                capacity: c,
            })
            .collect(),
        counters: out,
        policies: dp
            .rule_counters()?
            .into_iter()
            .map(|(p, c)| PolicyCounter {
                policy: p,
                packets: c.packets,
                bytes: c.bytes,
            })
            .collect(),
        management,
        wireguard,
        underlay: dp
            .underlay_counters()?
            .into_iter()
            .enumerate()
            .filter(|(_, c)| c.packets > 0)
            .map(|(i, c)| UnderlayCounter {
                reason: gateway_common::underlay::REASON_NAMES[i].into(),
                dropped: gateway_common::underlay::drops(i as u32),
                packets: c.packets,
                bytes: c.bytes,
            })
            .collect(),
        nat_ports: dp
            .nat_port_occupancy()
            .map(|(busiest_destination, range)| NatPorts {
                busiest_destination,
                range,
            }),
        evicted: dp
            .evictions()?
            .into_iter()
            .map(|(table, entry, count)| EvictionCounter {
                table: table.into(),
                entry: entry.into(),
                count,
            })
            .collect(),
    })
}

pub use gateway_testkit::process::http_get;

pub fn print(addr: SocketAddr, json: bool) -> anyhow::Result<()> {
    let body = http_get(addr, "/status")?;
    if json {
        println!("{body}");
        return Ok(());
    }
    let r: Report = serde_json::from_str(&body).context("parsing /status")?;
    println!(
        "policy: {} (generation {}, {} enabled policies)",
        r.policy_file, r.generation, r.rules
    );
    println!("last reload: {}", r.last_reload);
    match (&r.pin_dir, r.adopted_generation) {
        (Some(dir), Some(g)) => println!(
            "data plane: pinned under {dir} (stays in force if this process exits); adopted generation {g} at start"
        ),
        (Some(dir), None) => {
            println!("data plane: pinned under {dir} (stays in force if this process exits)")
        }
        (None, _) => println!("data plane: not pinned (removed when this process exits)"),
    }
    if let Some(m) = &r.management {
        let state = if m.connected {
            "connected"
        } else {
            "NOT connected (last policy stays in force)"
        };
        println!(
            "management: {} {state}, serial {}, overlay address {}",
            m.url,
            m.serial,
            m.overlay_address.as_deref().unwrap_or("-")
        );
        if let Some(why) = &m.refused {
            println!("management REFUSED this gateway: {why}; deny-all in force");
        }
    }
    if let Some(w) = &r.wireguard {
        println!(
            "wireguard: {} on {} ({}), port {}, mtu {}, public key {}, addresses {}",
            w.backend.label(),
            w.interface,
            w.chosen,
            w.listen_port,
            w.mtu.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
            w.public_key.as_deref().unwrap_or("-"),
            w.addresses
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        );
        for p in &w.peers {
            let hs = p
                .handshake_age_secs
                .map(|s| format!("{s}s ago"))
                .unwrap_or_else(|| "never".into());
            let ep = p
                .endpoint
                .map(|e| e.to_string())
                .unwrap_or_else(|| "-".into());
            let ips = p
                .allowed_ips
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(",");
            println!(
                "  peer {} endpoint {ep} allowed {ips} handshake {hs} rx {} tx {}",
                p.public_key, p.rx_bytes, p.tx_bytes
            );
        }
    }
    if !r.underlay.is_empty() {
        println!("underlay filter (WireGuard port):");
        for c in &r.underlay {
            println!(
                "  {:<7} {:<22} {:>12} packets {:>14} bytes",
                if c.dropped { "drop" } else { "pass" },
                c.reason,
                c.packets,
                c.bytes
            );
        }
    }
    println!("\nattached:");
    for a in &r.attachments {
        println!("  {:<16} {:<24} {}", a.interface, a.program, a.mode);
    }
    println!("\nmaps:");
    for m in &r.maps {
        println!("  {:<16} {:>10} / {}", m.map, m.entries, m.capacity);
    }
    if let Some(p) = &r.nat_ports {
        println!(
            "\nmasquerade ports: {} of {} in use toward the busiest destination",
            p.busiest_destination, p.range
        );
    }
    if !r.evicted.is_empty() {
        println!("\nlive entries given up for new ones (a growing count: the table is too small):");
        for e in &r.evicted {
            println!("  {:<16} {:<12} {:>12}", e.table, e.entry, e.count);
        }
    }
    println!("\ncounters:");
    println!(
        "  {:<16} {:<7} {:<22} {:>12} {:>14}",
        "direction", "verdict", "reason", "packets", "bytes"
    );
    for c in &r.counters {
        println!(
            "  {:<16} {:<7} {:<22} {:>12} {:>14}",
            c.direction, c.verdict, c.reason, c.packets, c.bytes
        );
    }
    println!("\npolicies:");
    for p in &r.policies {
        println!(
            "  {:<40} {:>12} packets {:>14} bytes",
            p.policy, p.packets, p.bytes
        );
    }
    Ok(())
}
