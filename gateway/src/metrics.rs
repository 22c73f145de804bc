//! Prometheus metrics, refreshed from the kernel counters on every scrape. Base units, `_total`
//! counters, and bounded labels only: direction (hook), verdict, reason, policy, map.

use std::collections::HashMap;

use gateway_common::stats::{HOOK_NAMES, HOOKS, REASON_NAMES, reason, stats_index, verdict_label};
use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use gateway_dataplane::Dataplane;

pub struct Metrics {
    registry: Registry,
    packets: IntCounterVec,
    bytes: IntCounterVec,
    policy_packets: IntCounterVec,
    policy_bytes: IntCounterVec,
    pub reloads: IntCounterVec,
    generation: IntGauge,
    rules: IntGauge,
    map_entries: IntGaugeVec,
    map_capacity: IntGaugeVec,
    pub apply_seconds: prometheus::Gauge,
    swept: IntCounterVec,
    nat_removed: IntCounterVec,
    /// The most translations toward one destination, and the range's size: the first
    /// approaching the second is the masquerade running out of ports.
    nat_busiest_destination: IntGauge,
    nat_port_range: IntGauge,
    underlay_packets: IntCounterVec,
    underlay_bytes: IntCounterVec,
    evicted: IntCounterVec,
    pub management: ManagementMetrics,
    pub wireguard: WireGuardMetrics,
    /// Last values pushed, so counters advance by the kernel's deltas.
    seen: HashMap<(u8, String, String), u64>,
}

impl Metrics {
    pub fn new() -> anyhow::Result<Metrics> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| -> anyhow::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let packets = counter(
            "gateway_packets_total",
            "Packets judged, by hook, verdict and reason",
            &["direction", "verdict", "reason"],
        )?;
        let bytes = counter(
            "gateway_bytes_total",
            "Bytes judged, by hook, verdict and reason",
            &["direction", "verdict", "reason"],
        )?;
        let policy_packets = counter(
            "gateway_policy_packets_total",
            "Packets decided by each policy",
            &["policy"],
        )?;
        let policy_bytes = counter(
            "gateway_policy_bytes_total",
            "Bytes decided by each policy",
            &["policy"],
        )?;
        let reloads = counter(
            "gateway_policy_reloads_total",
            "Policy loads, by result",
            &["result"],
        )?;
        let generation = IntGauge::new(
            "gateway_policy_generation",
            "Generation of the policy in force",
        )?;
        registry.register(Box::new(generation.clone()))?;
        let rules = IntGauge::new("gateway_policy_rules", "Enabled policies in force")?;
        registry.register(Box::new(rules.clone()))?;
        let map_entries = IntGaugeVec::new(
            Opts::new("gateway_map_entries", "Entries in use per map"),
            &["map"],
        )?;
        registry.register(Box::new(map_entries.clone()))?;
        let map_capacity = IntGaugeVec::new(
            Opts::new("gateway_map_capacity_entries", "Capacity per map"),
            &["map"],
        )?;
        registry.register(Box::new(map_capacity.clone()))?;
        let underlay_packets = counter(
            "gateway_underlay_packets_total",
            "Packets the underlay filter saw, by reason (what passed and why the rest was dropped)",
            &["verdict", "reason"],
        )?;
        let underlay_bytes = counter(
            "gateway_underlay_bytes_total",
            "Bytes the underlay filter saw, by reason",
            &["verdict", "reason"],
        )?;
        let evicted = counter(
            "gateway_flow_table_evictions_total",
            "Live entries a flow table gave up for a new one, by table and whether the entry had been answered",
            &["table", "entry"],
        )?;
        let swept = counter(
            "gateway_conntrack_removed_total",
            "Conntrack entries removed by the controller, by cause",
            &["cause"],
        )?;
        let nat_removed = counter(
            "gateway_nat_removed_total",
            "Masquerade translations removed by the controller, by cause (flow_ended: revoked, or gone from conntrack and idle 4 min; transitory: a TCP connection never established or closing, past 4 min; idle)",
            &["cause"],
        )?;
        let gauge = |name: &str, help: &str| -> anyhow::Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let nat_busiest_destination = gauge(
            "gateway_nat_busiest_destination_ports",
            "Most masquerade ports in use toward one destination (address, port, protocol), at the last sweep",
        )?;
        let nat_port_range = gauge(
            "gateway_nat_port_range_ports",
            "Ports in the masquerade's range (each destination can take this many translations)",
        )?;
        let apply_seconds = prometheus::Gauge::new(
            "gateway_policy_apply_seconds",
            "Time the last policy took to compile and apply",
        )?;
        registry.register(Box::new(apply_seconds.clone()))?;
        let management = ManagementMetrics::register(&registry)?;
        let wireguard = WireGuardMetrics::register(&registry)?;
        Ok(Metrics {
            management,
            wireguard,
            registry,
            packets,
            bytes,
            policy_packets,
            policy_bytes,
            reloads,
            generation,
            rules,
            map_entries,
            map_capacity,
            apply_seconds,
            swept,
            nat_removed,
            nat_busiest_destination,
            nat_port_range,
            underlay_packets,
            underlay_bytes,
            evicted,
            seen: HashMap::new(),
        })
    }

    fn advance(&mut self, kind: u8, a: &str, b: &str, now: u64) -> u64 {
        let last = self
            .seen
            .entry((kind, a.to_string(), b.to_string()))
            .or_insert(0);
        let delta = now.saturating_sub(*last);
        *last = now;
        delta
    }

    pub fn refresh(&mut self, dp: &Dataplane) -> anyhow::Result<()> {
        let counters = dp.verdict_counters()?;
        for hook in 0..HOOKS {
            for r in 0..reason::SLOTS {
                let name = REASON_NAMES[r as usize];
                if name.is_empty() {
                    continue;
                }
                let c = counters[stats_index(hook, r) as usize];
                let dir = HOOK_NAMES[hook as usize];
                let verdict = verdict_label(r);
                let labels = [dir, verdict, name];
                let key = format!("{verdict}/{name}");
                let dp_ = self.advance(0, dir, &key, c.packets);
                let db = self.advance(1, dir, &key, c.bytes);
                if c.packets > 0 {
                    self.packets.with_label_values(&labels).inc_by(dp_);
                    self.bytes.with_label_values(&labels).inc_by(db);
                }
            }
        }
        for (i, c) in dp.underlay_counters()?.into_iter().enumerate() {
            let name = gateway_common::underlay::REASON_NAMES[i];
            let verdict = if gateway_common::underlay::drops(i as u32) {
                "drop"
            } else {
                "pass"
            };
            let dp_ = self.advance(4, name, "", c.packets);
            let db = self.advance(5, name, "", c.bytes);
            if c.packets > 0 {
                self.underlay_packets
                    .with_label_values(&[verdict, name])
                    .inc_by(dp_);
                self.underlay_bytes
                    .with_label_values(&[verdict, name])
                    .inc_by(db);
            }
        }
        for (table, entry, count) in dp.evictions()? {
            let delta = self.advance(6, table, entry, count);
            self.evicted
                .with_label_values(&[table, entry])
                .inc_by(delta);
        }
        let rules = dp.rule_counters()?;
        // Series of policies no longer in force go (their counts live on under "(retired)"), so
        // the label set stays bounded by the policies in force.
        let current: std::collections::HashSet<&str> =
            rules.iter().map(|(n, _)| n.as_str()).collect();
        let gone: Vec<String> = self
            .seen
            .keys()
            .filter(|(k, n, _)| *k == 2 && !current.contains(n.as_str()))
            .map(|(_, n, _)| n.clone())
            .collect();
        for name in gone {
            let _ = self.policy_packets.remove_label_values(&[name.as_str()]);
            let _ = self.policy_bytes.remove_label_values(&[name.as_str()]);
            self.seen.remove(&(2, name.clone(), String::new()));
            self.seen.remove(&(3, name, String::new()));
        }
        for (name, c) in rules {
            let dp_ = self.advance(2, &name, "", c.packets);
            let db = self.advance(3, &name, "", c.bytes);
            self.policy_packets
                .with_label_values(&[name.as_str()])
                .inc_by(dp_);
            self.policy_bytes
                .with_label_values(&[name.as_str()])
                .inc_by(db);
        }
        self.management.refresh();
        self.generation.set(dp.generation() as i64);
        self.rules.set(dp.active_rules().len() as i64);
        for (map, used, cap) in dp.fill_levels() {
            self.map_entries.with_label_values(&[map]).set(used as i64);
            self.map_capacity.with_label_values(&[map]).set(cap as i64);
        }
        Ok(())
    }

    pub fn count_sweep(&self, r: &gateway_dataplane::SweepReport) {
        if r.revoked > 0 {
            tracing::info!(
                flows = r.revoked,
                "idle flows the new policy no longer allows were removed"
            );
        }
        self.swept
            .with_label_values(&["expired"])
            .inc_by(r.expired as u64);
        self.swept
            .with_label_values(&["revoked"])
            .inc_by(r.revoked as u64);
        for (cause, n) in [
            ("flow_ended", r.nat.flow_ended),
            ("transitory", r.nat.transitory),
            ("idle", r.nat.idle),
        ] {
            self.nat_removed
                .with_label_values(&[cause])
                .inc_by(n as u64);
        }
        self.nat_busiest_destination
            .set(r.nat.busiest_destination as i64);
        self.nat_port_range.set(r.nat.port_range as i64);
    }

    pub fn render(&self) -> anyhow::Result<String> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(String::from_utf8(buf)?)
    }
}

/// The WireGuard interface, in aggregate: per-peer detail is in /status, not in labels (a
/// label per peer key would grow without bound).
pub struct WireGuardMetrics {
    /// 1, labelled with the backend and interface (an info metric).
    backend: IntGaugeVec,
    peers: IntGauge,
    /// Peers whose last handshake is under 3 minutes old (WireGuard rekeys every 2).
    peers_current: IntGauge,
    rx_bytes: IntGauge,
    tx_bytes: IntGauge,
}

impl WireGuardMetrics {
    fn register(registry: &Registry) -> anyhow::Result<WireGuardMetrics> {
        let backend = IntGaugeVec::new(
            Opts::new(
                "gateway_wireguard_backend_info",
                "The WireGuard backend in use (1)",
            ),
            &["backend", "interface"],
        )?;
        let peers = IntGauge::new(
            "gateway_wireguard_peers",
            "WireGuard peers configured on the interface",
        )?;
        let peers_current = IntGauge::new(
            "gateway_wireguard_peers_with_recent_handshake",
            "Peers with a handshake in the last 180 s",
        )?;
        let rx_bytes = IntGauge::new(
            "gateway_wireguard_received_bytes",
            "Bytes received from the peers configured now (a peer's bytes leave with it)",
        )?;
        let tx_bytes = IntGauge::new(
            "gateway_wireguard_sent_bytes",
            "Bytes sent to the peers configured now (a peer's bytes leave with it)",
        )?;
        for m in [&peers, &peers_current, &rx_bytes, &tx_bytes] {
            registry.register(Box::new(m.clone()))?;
        }
        registry.register(Box::new(backend.clone()))?;
        Ok(WireGuardMetrics {
            backend,
            peers,
            peers_current,
            rx_bytes,
            tx_bytes,
        })
    }

    pub fn refresh(&self, r: &gateway_wireguard::TunnelReport) {
        self.backend.reset();
        self.backend
            .with_label_values(&[r.backend.label(), &r.interface])
            .set(1);
        self.peers.set(r.peers.len() as i64);
        self.peers_current.set(
            r.peers
                .iter()
                .filter(|p| p.handshake_age_secs.is_some_and(|a| a < 180))
                .count() as i64,
        );
        self.rx_bytes
            .set(r.peers.iter().map(|p| p.rx_bytes).sum::<u64>() as i64);
        self.tx_bytes
            .set(r.peers.iter().map(|p| p.tx_bytes).sum::<u64>() as i64);
    }
}

/// The management client's health: connection, last serial, freshness and apply latency.
pub struct ManagementMetrics {
    pub connected: IntGauge,
    /// 1 once the management service refused this gateway (deny-all in force).
    pub refused: IntGauge,
    pub serial: IntGauge,
    since_sync: prometheus::Gauge,
    pub maps: IntCounterVec,
    pub apply_seconds: prometheus::Histogram,
    last_sync: Option<std::time::Instant>,
}

impl ManagementMetrics {
    fn register(registry: &Registry) -> anyhow::Result<ManagementMetrics> {
        let connected = IntGauge::new(
            "gateway_management_connected",
            "1 while the Sync stream to management is open",
        )?;
        let serial = IntGauge::new(
            "gateway_management_serial",
            "Serial of the network map in force",
        )?;
        let refused = IntGauge::new(
            "gateway_management_refused",
            "1 once the management service refused this gateway (peer deleted, key refused): a deny-all policy is in force",
        )?;
        let since_sync = prometheus::Gauge::new(
            "gateway_management_seconds_since_sync",
            "Seconds since the last message on the Sync stream (-1: none yet)",
        )?;
        let maps = IntCounterVec::new(
            Opts::new(
                "gateway_management_maps_total",
                "Network maps received, by result",
            ),
            &["result"],
        )?;
        let apply_seconds = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "gateway_management_apply_seconds",
                "From a network map's arrival to its policy in force",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5,
            ]),
        )?;
        registry.register(Box::new(connected.clone()))?;
        registry.register(Box::new(serial.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(since_sync.clone()))?;
        registry.register(Box::new(maps.clone()))?;
        registry.register(Box::new(apply_seconds.clone()))?;
        since_sync.set(-1.0);
        Ok(ManagementMetrics {
            connected,
            refused,
            serial,
            since_sync,
            maps,
            apply_seconds,
            last_sync: None,
        })
    }

    pub fn synced(&mut self) {
        self.last_sync = Some(std::time::Instant::now());
    }

    fn refresh(&self) {
        if let Some(t) = self.last_sync {
            self.since_sync.set(t.elapsed().as_secs_f64());
        }
    }
}
