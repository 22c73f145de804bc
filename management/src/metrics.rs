//! Prometheus metrics of the management service, served at `/metrics` (no token, as scrapers
//! expect; it shows counts, never names of peers or keys).
//!
//! Counts of what the account holds (peers by group and status — the seed's
//! `netbird_peers_total{group,status}`, computed here so operators need not poll the API —,
//! setup keys by state, policies, ACLs) are computed at each scrape; events (map pushes, logins,
//! request latencies) are counted as they happen. Label sets are bounded by the account's groups
//! and the API's routes.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::{model::now, service::Management};

pub struct Metrics {
    pub map_pushes: IntCounter,
    pub logins: IntCounterVec,
    pub http_requests: HistogramVec,
    /// TLS handshakes on the listener by result (ok, failed, timeout, overload).
    pub tls_handshakes: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            map_pushes: IntCounter::new(
                "management_network_map_pushes_total",
                "Network maps sent to peers on Sync streams",
            )
            .expect("valid"),
            logins: IntCounterVec::new(
                Opts::new("management_logins_total", "gRPC Logins by result"),
                &["result"],
            )
            .expect("valid"),
            http_requests: HistogramVec::new(
                HistogramOpts::new(
                    "management_http_request_duration_seconds",
                    "REST and gRPC request latency by route",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                ]),
                &["method", "route", "status"],
            )
            .expect("valid"),
            tls_handshakes: IntCounterVec::new(
                Opts::new(
                    "management_tls_handshakes_total",
                    "TLS handshakes on the listener by result",
                ),
                &["result"],
            )
            .expect("valid"),
        }
    }
}

/// The text exposition of every metric, as of now.
pub fn render(m: &Management) -> String {
    let registry = Registry::new();
    let peers = IntGaugeVec::new(
        Opts::new(
            "netbird_peers_total",
            "Peers by group and status (online: a Sync stream is open)",
        ),
        &["group", "status"],
    )
    .expect("valid");
    let keys = IntGaugeVec::new(
        Opts::new("management_setup_keys", "Setup keys by state"),
        &["state"],
    )
    .expect("valid");
    let objects = IntGaugeVec::new(
        Opts::new("management_objects", "Objects the account holds, by kind"),
        &["kind"],
    )
    .expect("valid");
    let streams =
        prometheus::IntGauge::new("management_sync_streams", "Open Sync streams").expect("valid");
    m.read(|a| {
        for g in a.groups.values() {
            let online = g.peers.iter().filter(|p| m.is_connected(p)).count();
            peers
                .with_label_values(&[g.name.as_str(), "online"])
                .set(online as i64);
            peers
                .with_label_values(&[g.name.as_str(), "offline"])
                .set((g.peers.len() - online) as i64);
        }
        let t = now();
        for state in ["valid", "expired", "revoked", "overused"] {
            keys.with_label_values(&[state]).set(
                a.setup_keys
                    .values()
                    .filter(|k| k.state(t).as_str() == state)
                    .count() as i64,
            );
        }
        for (kind, n) in [
            ("peer", a.peers.len()),
            ("group", a.groups.len()),
            ("policy", a.policies.len()),
            ("acl", a.acls.len()),
            ("network", a.networks.len()),
        ] {
            objects.with_label_values(&[kind]).set(n as i64);
        }
    });
    streams.set(m.open_streams() as i64);
    let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
        Box::new(peers),
        Box::new(keys),
        Box::new(objects),
        Box::new(streams),
        Box::new(m.metrics.map_pushes.clone()),
        Box::new(m.metrics.logins.clone()),
        Box::new(m.metrics.tls_handshakes.clone()),
        Box::new(m.metrics.http_requests.clone()),
    ];
    for c in collectors {
        registry.register(c).expect("distinct names");
    }
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("text encoding");
    String::from_utf8(out).expect("UTF-8")
}
