//! The gateway's WireGuard interface as the runner drives it: opened before the data plane
//! attaches to it, configured from the file (static peers) or from each network map.

use anyhow::Context as _;
use tracing::info;

use gateway_dataplane::Dataplane;
use gateway_wireguard::{DeviceSpec, PeerDiff, PeerSet, PeerSpec, Tunnel};

use crate::config::{Config, MssClampConfig, MssClampMode, WireGuardConfig};

/// Opens the configured interface with the gateway's key (its management identity).
pub fn open(wg: &WireGuardConfig, private_key_b64: &str) -> anyhow::Result<Tunnel> {
    let spec = DeviceSpec {
        name: wg.interface.clone(),
        private_key: private_key_b64.to_string(),
        listen_port: wg.listen_port,
        mtu: wg.mtu(None),
    };
    let tunnel = Tunnel::open(wg.backend, &spec)
        .with_context(|| format!("WireGuard interface {}", wg.interface))?;
    let report = tunnel.report()?;
    info!(
        backend = tunnel.kind().label(),
        why = %report.chosen,
        interface = %report.interface,
        listen_port = report.listen_port,
        public_key = report.public_key.as_deref().unwrap_or("-"),
        outlives_process = tunnel.outlives_process(),
        "WireGuard interface ready"
    );
    Ok(tunnel)
}

/// File mode: the configured addresses and static peers.
pub fn apply_static(tunnel: &Tunnel, wg: &WireGuardConfig) -> anyhow::Result<()> {
    if !tunnel.owns_config() {
        return Ok(());
    }
    tunnel.set_addresses(&wg.addresses())?;
    let specs: Vec<PeerSpec> = wg.peers.iter().map(|p| p.spec()).collect();
    let diff = tunnel.apply_peers(&PeerSet::check(&specs, None)?)?;
    log_diff(tunnel, &diff);
    Ok(())
}

fn log_diff(tunnel: &Tunnel, d: &PeerDiff) {
    info!(
        interface = tunnel.name(),
        set = d.set.len(),
        removed = d.remove.len(),
        unchanged = d.unchanged,
        "WireGuard peers applied"
    );
}

/// A network map's part: MTU (and the MSS clamp that follows it), addresses, peers.
pub fn apply_map(
    tunnel: &Tunnel,
    dp: &mut Dataplane,
    cfg: &Config,
    addresses: &[ipnet::IpNet],
    mtu: Option<u32>,
    peers: &PeerSet,
) -> anyhow::Result<PeerDiff> {
    let Some(wg) = &cfg.wireguard else {
        anyhow::bail!("no wireguard section")
    };
    if !tunnel.owns_config() {
        return Ok(PeerDiff::default());
    }
    let want_mtu = wg.mtu(mtu);
    if gateway_wireguard::link::mtu(tunnel.name()).ok() != Some(want_mtu) {
        gateway_wireguard::link::set_mtu(tunnel.name(), want_mtu)?;
        let auto = cfg
            .interfaces
            .tunnel
            .iter()
            .find(|t| t.name == tunnel.name())
            .is_none_or(|t| {
                matches!(
                    t.mss_clamp,
                    MssClampConfig::Mode(MssClampMode::Auto) | MssClampConfig::Switch(true)
                )
            });
        if auto {
            dp.set_mss_clamp(
                tunnel.name(),
                Some(gateway_common::mss::MssClamp::for_mtu(want_mtu)),
            )?;
        }
        info!(
            interface = tunnel.name(),
            mtu = want_mtu,
            "WireGuard MTU set from the network map"
        );
    }
    tunnel.set_addresses(addresses)?;
    let diff = tunnel.apply_peers(peers)?;
    log_diff(tunnel, &diff);
    Ok(diff)
}

/// The management service refused this gateway: no peer may keep a session.
pub fn remove_all_peers(tunnel: &Tunnel) -> anyhow::Result<()> {
    if tunnel.owns_config() {
        let d = tunnel.apply_peers(&PeerSet::default())?;
        log_diff(tunnel, &d);
    }
    Ok(())
}
