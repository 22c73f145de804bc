//! `gateway relay serve`: the TURN relay (gateway-relay) from its own YAML or from coturn's
//! turnserver.conf, until SIGINT/SIGTERM, with /metrics and /status; `gateway relay status`.

use std::{net::SocketAddr, path::Path, sync::Arc};

use anyhow::Context as _;
use prometheus::{Encoder as _, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use tracing::{error, info, warn};

use gateway_relay::{
    config::RelayConfig,
    server::{Relay, Status},
};

pub const DEFAULT_STATUS_ADDR: &str = "127.0.0.1:9465";

pub fn serve(config: Option<&Path>, coturn: Option<&Path>) -> anyhow::Result<()> {
    crate::runner::init_tracing();
    let cfg = match (config, coturn) {
        (Some(p), None) => RelayConfig::load_yaml(p)?,
        (None, Some(p)) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))?;
            let (cfg, report) = RelayConfig::from_coturn(&text).with_context(|| format!("{}", p.display()))?;
            if !report.ignored.is_empty() {
                warn!(options = ?report.ignored, "coturn options that change nothing here (logging, CLI, listeners this relay does not open)");
            }
            cfg
        }
        _ => anyhow::bail!("give --config (the relay's YAML) or --coturn-config (coturn's turnserver.conf)"),
    };
    let metrics_addr = cfg.metrics_addr;
    let relay = Relay::new(cfg)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        if let Some(addr) = metrics_addr {
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding the metrics address {addr}"))?;
            info!(%addr, "serving /metrics and /status");
            tokio::spawn(http(relay.clone(), listener));
        }
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            r = relay.clone().serve() => r,
            _ = term.recv() => { info!("SIGTERM: relay stopping"); Ok(()) }
            _ = int.recv() => { info!("SIGINT: relay stopping"); Ok(()) }
        }
    })
}

/// The relay's metrics, rendered from a status snapshot: gauges for what exists now, counters
/// for what was relayed and refused (by path and direction; bounded labels).
fn render(s: &Status) -> anyhow::Result<String> {
    let registry = Registry::new();
    let gauge = IntGaugeVec::new(Opts::new("gateway_relay_current", "Allocations, permissions and channels in force"), &["kind"])?;
    registry.register(Box::new(gauge.clone()))?;
    for (kind, v) in [("allocations", s.allocations), ("permissions", s.permissions), ("channels", s.channels)] {
        gauge.with_label_values(&[kind]).set(v as i64);
    }
    let packets = IntCounterVec::new(Opts::new("gateway_relay_packets_total", "Packets relayed, by path and direction"), &["path", "direction"])?;
    let bytes = IntCounterVec::new(Opts::new("gateway_relay_bytes_total", "Payload bytes relayed, by path and direction"), &["path", "direction"])?;
    let refused = IntCounterVec::new(Opts::new("gateway_relay_refused_total", "Requests and packets refused, by reason"), &["reason"])?;
    for c in [&packets, &bytes, &refused] {
        registry.register(Box::new(c.clone()))?;
    }
    packets.with_label_values(&["userspace", "to_peer"]).inc_by(s.to_peer_packets);
    packets.with_label_values(&["userspace", "to_client"]).inc_by(s.to_client_packets);
    bytes.with_label_values(&["userspace", "to_peer"]).inc_by(s.to_peer_bytes);
    bytes.with_label_values(&["userspace", "to_client"]).inc_by(s.to_client_bytes);
    refused.with_label_values(&["auth"]).inc_by(s.auth_failures);
    refused.with_label_values(&["peer_denied"]).inc_by(s.refused_peers);
    refused.with_label_values(&["no_permission"]).inc_by(s.dropped_no_permission);
    let mut out = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut out)?;
    Ok(String::from_utf8(out)?)
}

async fn http(relay: Arc<Relay>, listener: tokio::net::TcpListener) {
    use axum::{Router, http::StatusCode, response::IntoResponse, routing::get};
    let r2 = relay.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let relay = relay.clone();
                async move {
                    match render(&relay.status()) {
                        Ok(text) => (StatusCode::OK, [("content-type", "text/plain; version=0.0.4")], text).into_response(),
                        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")).into_response(),
                    }
                }
            }),
        )
        .route(
            "/status",
            get(move || {
                let relay = r2.clone();
                async move { (StatusCode::OK, [("content-type", "application/json")], serde_json::to_string_pretty(&relay.status()).unwrap_or_default()).into_response() }
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        error!("relay metrics server stopped: {e}");
    }
}

/// `gateway relay status`: what a running relay reports.
pub fn print_status(addr: SocketAddr, json: bool) -> anyhow::Result<()> {
    let body = crate::status::http_get(addr, "/status")?;
    if json {
        println!("{body}");
        return Ok(());
    }
    let s: Status = serde_json::from_str(&body).context("parsing /status")?;
    println!("allocations {}, permissions {}, channels {}", s.allocations, s.permissions, s.channels);
    println!("relayed (userspace): to peers {} packets / {} bytes, to clients {} packets / {} bytes", s.to_peer_packets, s.to_peer_bytes, s.to_client_packets, s.to_client_bytes);
    println!("refused: {} authentications, {} peers denied, {} packets without permission", s.auth_failures, s.refused_peers, s.dropped_no_permission);
    Ok(())
}
