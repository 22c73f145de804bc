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
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("{}: cannot read", p.display()))?;
            let (cfg, report) =
                RelayConfig::from_coturn(&text).with_context(|| format!("{}", p.display()))?;
            if !report.ignored.is_empty() {
                warn!(options = ?report.ignored, "coturn options that change nothing here (logging, CLI, listeners this relay does not open)");
            }
            cfg
        }
        _ => anyhow::bail!(
            "give --config (the relay's YAML) or --coturn-config (coturn's turnserver.conf)"
        ),
    };
    let metrics_addr = cfg.metrics_addr;
    let xdp = match &cfg.xdp {
        Some(x) => Some(xdp_fast_path(x)?),
        None => None,
    };
    let fast = xdp.clone().map(|x| {
        (
            x as Arc<dyn gateway_relay::fast_path::FastPath>,
            gateway_common::turn::BINDING_SLOTS,
        )
    });
    let relay = Relay::with_fast_path(cfg, fast)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        if let Some(addr) = metrics_addr {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics address {addr}"))?;
            info!(%addr, "serving /metrics and /status");
            tokio::spawn(http(relay.clone(), listener));
        }
        if let Some(x) = xdp {
            // The program trusts its bindings only while this process says it is alive.
            tokio::spawn(async move {
                let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
                loop {
                    every.tick().await;
                    if let Err(e) = x.stamp() {
                        warn!("TURN fast path: cannot renew the sign of life: {e:#}");
                    }
                }
            });
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

/// The gateway's XDP program as the relay's fast path: one data plane (not pinned: bound
/// channels leave the kernel with the relay), the program on each configured interface and,
/// where configured, after the gateway's underlay filter.
struct XdpFastPath {
    /// Out of the gateway's chain first when dropped (fields drop in order).
    _chain: Option<gateway_dataplane::TurnChain>,
    dp: std::sync::Mutex<gateway_dataplane::Dataplane>,
}

impl XdpFastPath {
    fn stamp(&self) -> anyhow::Result<()> {
        self.dp
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stamp_turn_alive()
    }
}

/// Both directions of a binding in the kernel's maps: (channel key, to the peer, peer key, to
/// the client).
type KernelEntries<A> = (
    gateway_common::turn::ChannelKey<A>,
    gateway_common::turn::ToPeer<A>,
    gateway_common::turn::PeerKey<A>,
    gateway_common::turn::ToClient<A>,
);

/// A binding's entries as the kernel's maps of family `A` key them: the client's channel and
/// the peer's address (both directions' keys), and what each direction rewrites to. `None`
/// when an address is not of that family.
fn kernel_entries<A: gateway_common::turn::TurnAddr>(
    b: &gateway_relay::fast_path::Binding,
    ip: fn(std::net::IpAddr) -> Option<A>,
) -> Option<KernelEntries<A>> {
    use gateway_common::turn::*;
    let (client, listen, peer, relay) = (
        ip(b.client.ip())?,
        ip(b.listen.ip())?,
        ip(b.peer.ip())?,
        ip(b.relay.ip())?,
    );
    let (cport, lport, pport, rport) = (
        b.client.port(),
        b.listen.port(),
        b.peer.port(),
        b.relay.port(),
    );
    Some((
        ChannelKey {
            client,
            listen,
            client_port: cport,
            listen_port: lport,
            channel: b.channel,
            _pad: 0,
        },
        ToPeer {
            peer,
            relay,
            peer_port: pport,
            relay_port: rport,
            slot: b.slot,
        },
        PeerKey {
            peer,
            relay,
            peer_port: pport,
            relay_port: rport,
        },
        ToClient {
            client,
            listen,
            client_port: cport,
            listen_port: lport,
            channel: b.channel,
            _pad: 0,
            slot: b.slot,
        },
    ))
}

fn v4(ip: std::net::IpAddr) -> Option<[u8; 4]> {
    match ip {
        std::net::IpAddr::V4(a) => Some(a.octets()),
        std::net::IpAddr::V6(_) => None,
    }
}

fn v6(ip: std::net::IpAddr) -> Option<[u8; 16]> {
    match ip {
        std::net::IpAddr::V6(a) => Some(a.octets()),
        std::net::IpAddr::V4(_) => None,
    }
}

impl gateway_relay::fast_path::FastPath for XdpFastPath {
    fn bind(&self, b: &gateway_relay::fast_path::Binding) -> anyhow::Result<()> {
        let mut dp = self.dp.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((channel, to_peer, from_peer, to_client)) = kernel_entries(b, v4) {
            dp.set_turn_binding(channel, to_peer, from_peer, to_client)
        } else if let Some((channel, to_peer, from_peer, to_client)) = kernel_entries(b, v6) {
            dp.set_turn_binding(channel, to_peer, from_peer, to_client)
        } else {
            anyhow::bail!("a binding across address families: {b:?}")
        }
    }

    fn unbind(&self, b: &gateway_relay::fast_path::Binding) {
        let mut dp = self.dp.lock().unwrap_or_else(|p| p.into_inner());
        let removed = if let Some((channel, _, from_peer, _)) = kernel_entries(b, v4) {
            dp.remove_turn_binding(&channel, &from_peer)
        } else if let Some((channel, _, from_peer, _)) = kernel_entries(b, v6) {
            dp.remove_turn_binding(&channel, &from_peer)
        } else {
            Ok(())
        };
        if let Err(e) = removed {
            warn!(
                "taking channel {:#x} back from the kernel: {e:#}",
                b.channel
            );
        }
    }

    fn totals(&self) -> gateway_relay::fast_path::Totals {
        use gateway_common::turn::reason;
        let c = self
            .dp
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .turn_counters()
            .unwrap_or_default();
        let get = |r: u32| c.get(r as usize).copied().unwrap_or_default();
        // Reason counters count frames (with headers); payload bytes are per binding.
        gateway_relay::fast_path::Totals {
            to_peer_packets: get(reason::TO_PEER).packets,
            to_peer_bytes: get(reason::TO_PEER).bytes,
            to_client_packets: get(reason::TO_CLIENT).packets,
            to_client_bytes: get(reason::TO_CLIENT).bytes,
        }
    }

    fn slot_totals(&self, slot: u32) -> gateway_relay::fast_path::Totals {
        // Payload bytes, as userspace counts them.
        let (to_peer, to_client) = self
            .dp
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .turn_binding_counters(slot)
            .unwrap_or_default();
        gateway_relay::fast_path::Totals {
            to_peer_packets: to_peer.packets,
            to_peer_bytes: to_peer.bytes,
            to_client_packets: to_client.packets,
            to_client_bytes: to_client.bytes,
        }
    }
}

fn xdp_fast_path(x: &gateway_relay::config::XdpConfig) -> anyhow::Result<Arc<XdpFastPath>> {
    anyhow::ensure!(
        !x.interfaces.is_empty() || x.behind_gateway.is_some(),
        "xdp: give interfaces for the relay's own program, behind_gateway (the gateway's pin \
         folder) to run after its underlay filter, or both"
    );
    let attach = match x.attach.as_str() {
        "xdp-native" => gateway_dataplane::LanAttach::XdpNative,
        "xdp-generic" => gateway_dataplane::LanAttach::XdpGeneric,
        other => anyhow::bail!("xdp.attach {other:?}: xdp-native or xdp-generic"),
    };
    let opts = gateway_dataplane::LoadOptions {
        pin_root: None,
        ..Default::default()
    };
    let mut dp = gateway_dataplane::Dataplane::load(&opts)?;
    dp.stamp_turn_alive()?;
    for iface in &x.interfaces {
        let mode = dp.attach_turn(iface, attach).with_context(|| {
            format!(
                "attaching the TURN fast path to {iface}: an interface takes one XDP program, so if \
                 another is there (the gateway's underlay filter, another relay), give this relay \
                 another interface, set xdp.behind_gateway to run after the gateway's underlay \
                 filter there, or leave `xdp` out and its channels are relayed in userspace"
            )
        })?;
        // The program asks the kernel's FIB for routes with an input lookup, which the kernel
        // answers only on interfaces that forward (per family; a host without IPv6 has no
        // IPv6 setting to read, and no IPv6 channels).
        let forwards = |family: &str| {
            std::fs::read_to_string(format!("/proc/sys/net/{family}/conf/{iface}/forwarding"))
                .map(|v| v.trim() == "1")
        };
        let off: Vec<&str> = [("ipv4", forwards("ipv4").unwrap_or(false))]
            .into_iter()
            .chain(forwards("ipv6").ok().map(|on| ("ipv6", on)))
            .filter(|(_, on)| !on)
            .map(|(family, _)| family)
            .collect();
        if off.is_empty() {
            info!(interface = %iface, mode, "TURN fast path: bound channels forwarded in XDP");
        }
        for family in off {
            warn!(
                interface = %iface,
                mode,
                "TURN fast path attached, but {iface} does not forward {family} (net.{family}.conf.{iface}.forwarding=0): \
                 the kernel's FIB will not answer the program's route lookups, so {family} channels stay in \
                 userspace (counted as no_route). Enable forwarding on it, with a firewall that drops \
                 forwarded traffic, to let the program route"
            );
        }
    }
    let chain = match &x.behind_gateway {
        Some(root) => {
            let chain = dp.chain_turn_after_gateway(root)?;
            info!(
                slot = %chain.path().display(),
                "TURN fast path: also after the gateway's underlay filter, on the frames it passes"
            );
            Some(chain)
        }
        None => None,
    };
    Ok(Arc::new(XdpFastPath {
        _chain: chain,
        dp: std::sync::Mutex::new(dp),
    }))
}

/// The relay's metrics, rendered from a status snapshot: gauges for what exists now, counters
/// for what was relayed and refused (by path and direction; bounded labels).
fn render(s: &Status) -> anyhow::Result<String> {
    let registry = Registry::new();
    let gauge = IntGaugeVec::new(
        Opts::new(
            "gateway_relay_current",
            "Allocations, permissions and channels in force",
        ),
        &["kind"],
    )?;
    registry.register(Box::new(gauge.clone()))?;
    for (kind, v) in [
        ("allocations", s.allocations),
        ("permissions", s.permissions),
        ("channels", s.channels),
    ] {
        gauge.with_label_values(&[kind]).set(v as i64);
    }
    let packets = IntCounterVec::new(
        Opts::new(
            "gateway_relay_packets_total",
            "Packets relayed, by path and direction",
        ),
        &["path", "direction"],
    )?;
    let bytes = IntCounterVec::new(
        Opts::new(
            "gateway_relay_bytes_total",
            "Bytes relayed, by path and direction (payload in userspace, whole frames in XDP)",
        ),
        &["path", "direction"],
    )?;
    let refused = IntCounterVec::new(
        Opts::new(
            "gateway_relay_refused_total",
            "Requests and packets refused, by reason",
        ),
        &["reason"],
    )?;
    for c in [&packets, &bytes, &refused] {
        registry.register(Box::new(c.clone()))?;
    }
    packets
        .with_label_values(&["userspace", "to_peer"])
        .inc_by(s.to_peer_packets);
    packets
        .with_label_values(&["userspace", "to_client"])
        .inc_by(s.to_client_packets);
    bytes
        .with_label_values(&["userspace", "to_peer"])
        .inc_by(s.to_peer_bytes);
    bytes
        .with_label_values(&["userspace", "to_client"])
        .inc_by(s.to_client_bytes);
    refused.with_label_values(&["auth"]).inc_by(s.auth_failures);
    refused
        .with_label_values(&["peer_denied"])
        .inc_by(s.refused_peers);
    refused
        .with_label_values(&["no_permission"])
        .inc_by(s.dropped_no_permission);
    if let Some(x) = &s.xdp {
        packets
            .with_label_values(&["xdp", "to_peer"])
            .inc_by(x.to_peer_packets);
        packets
            .with_label_values(&["xdp", "to_client"])
            .inc_by(x.to_client_packets);
        bytes
            .with_label_values(&["xdp", "to_peer"])
            .inc_by(x.to_peer_bytes);
        bytes
            .with_label_values(&["xdp", "to_client"])
            .inc_by(x.to_client_bytes);
    }
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
                    match render(&relay.summary()) {
                        Ok(text) => (
                            StatusCode::OK,
                            [("content-type", "text/plain; version=0.0.4")],
                            text,
                        )
                            .into_response(),
                        Err(e) => {
                            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")).into_response()
                        }
                    }
                }
            }),
        )
        .route(
            "/status",
            get(move || {
                let relay = r2.clone();
                async move {
                    (
                        StatusCode::OK,
                        [("content-type", "application/json")],
                        serde_json::to_string_pretty(&relay.status()).unwrap_or_default(),
                    )
                        .into_response()
                }
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
    println!(
        "allocations {}, permissions {}, channels {}",
        s.allocations, s.permissions, s.channels
    );
    println!(
        "relayed (userspace): to peers {} packets / {} bytes, to clients {} packets / {} bytes",
        s.to_peer_packets, s.to_peer_bytes, s.to_client_packets, s.to_client_bytes
    );
    if let Some(x) = &s.xdp {
        println!(
            "relayed (XDP, {} channels now): to peers {} packets / {} bytes, to clients {} packets / {} bytes",
            s.offloaded_channels,
            x.to_peer_packets,
            x.to_peer_bytes,
            x.to_client_packets,
            x.to_client_bytes
        );
    }
    println!(
        "refused: {} authentications, {} peers denied, {} packets without permission",
        s.auth_failures, s.refused_peers, s.dropped_no_permission
    );
    for a in &s.per_allocation {
        let (u, x) = (&a.userspace, &a.xdp);
        println!(
            "  {} -> {} ({}, {} s left): {} permissions, {} channels ({} in XDP); to peer {} packets / {} bytes, to client {} packets / {} bytes",
            a.client,
            a.relayed,
            a.username,
            a.expires_in_s,
            a.permissions,
            a.channels,
            a.offloaded_channels,
            u.to_peer_packets + x.to_peer_packets,
            u.to_peer_bytes + x.to_peer_bytes,
            u.to_client_packets + x.to_client_packets,
            u.to_client_bytes + x.to_client_bytes
        );
    }
    Ok(())
}
