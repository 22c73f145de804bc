//! `gateway run`: load (or adopt the pinned data plane), attach, enforce; reload the policy on
//! SIGHUP. On exit the pinned data plane stays in force (fail-static) unless told otherwise.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::Context as _;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};
use tracing::{error, info, warn};

use gateway_dataplane::{Dataplane, LoadOptions, SweepReport, attach, sweep::Sweeper};
use gateway_policy::{self as policy, compile};

use crate::{
    config::Config,
    metrics::Metrics,
    status,
    sync::{self, Identity, SyncOptions},
};

pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";
/// How often expired conntrack entries are swept from userspace.
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Where the policy comes from.
pub enum PolicySource {
    /// A YAML file, re-read on SIGHUP.
    File(std::path::PathBuf),
    /// Network maps from a management service's Sync stream.
    Management(SyncOptions),
}

impl PolicySource {
    fn label(&self) -> String {
        match self {
            PolicySource::File(p) => p.display().to_string(),
            PolicySource::Management(m) => format!("management {}", m.url),
        }
    }
}

struct Gateway {
    dp: Dataplane,
    cfg: Config,
    /// Read again on SIGHUP (the policy file it names, and its `masquerade:` section).
    config_path: std::path::PathBuf,
    metrics: Metrics,
    source: String,
    last_reload: String,
    /// Serial of the network map in force (management source).
    serial: u64,
    /// The management client's state for /status; `None` with a policy file.
    management: Option<status::ManagementReport>,
    /// The policy applied last, until the next sweep has checked older flows against it. Flows
    /// with traffic end at their next packet (the kernel checks); this removes the idle ones.
    recheck: Option<compile::Compiled>,
    /// Whether the LAN interfaces masquerade (from the configuration or a network map).
    masquerading: bool,
    /// The masqueraded networks the last network map asked for.
    map_masquerade: Vec<ipnet::IpNet>,
    /// The WireGuard interface this gateway terminates, when the config has one.
    tunnel: Option<gateway_wireguard::Tunnel>,
}

pub fn init_tracing() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // try_init also routes the `log` records of aya-log (the kernel programs' logs) into tracing.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}

/// Reads and compiles a policy file.
fn compile_policy(cfg: &Config, file: &Path) -> anyhow::Result<compile::Compiled> {
    let set = policy::load_file(file)?;
    compile::compile(&set, &cfg.limits.compile_limits())
        .with_context(|| format!("{}", file.display()))
}

/// Picks the policy source: the config's policy file or a management service, never both.
pub fn policy_source(
    cfg: &Config,
    management: Option<SyncOptions>,
) -> anyhow::Result<PolicySource> {
    match (&cfg.policy, management) {
        (Some(_), Some(_)) => anyhow::bail!(
            "the config names a policy file and --management-url was given: choose one policy source"
        ),
        (Some(p), None) => Ok(PolicySource::File(p.clone())),
        (None, Some(m)) => Ok(PolicySource::Management(m)),
        (None, None) => {
            anyhow::bail!("no policy source: name `policy:` in the config or give --management-url")
        }
    }
}

pub fn run(
    config_path: &Path,
    metrics_override: Option<SocketAddr>,
    detach_on_exit: bool,
    management: Option<SyncOptions>,
    state_dir: &Path,
) -> anyhow::Result<()> {
    init_tracing();
    let mut cfg = Config::load(config_path)?;
    if metrics_override.is_some() {
        cfg.metrics_addr = metrics_override;
    }
    let source = policy_source(&cfg, management)?;
    // Everything that can be checked is checked before the kernel is touched.
    let started = Instant::now();
    // One key: the management identity and the WireGuard interface's (as in NetBird). A
    // gateway with neither has no key and needs no state directory.
    let identity = match (&source, &cfg.wireguard) {
        (PolicySource::File(_), None) => None,
        _ => Some(Identity::load_or_create(state_dir)?),
    };
    let wg_private_key = identity
        .as_ref()
        .map(|i| i.key.to_base64())
        .unwrap_or_default();
    let (compiled, identity) = match (&source, identity) {
        (PolicySource::File(file), _) => (compile_policy(&cfg, file)?, None),
        (PolicySource::Management(_), None) => {
            unreachable!("a management source always loads the identity")
        }
        (PolicySource::Management(m), Some(identity)) => {
            if !identity.is_registered() && m.setup_key.is_none() {
                anyhow::bail!(
                    "this gateway is not registered yet: give a setup key (--setup-key, --setup-key-file or GATEWAY_SETUP_KEY)"
                );
            }
            // Until the first network map arrives, nothing from the tunnel is allowed.
            let empty =
                compile::compile(&policy::PolicySet::default(), &cfg.limits.compile_limits())?;
            (empty, Some(identity))
        }
    };
    // The WireGuard interface exists before the data plane attaches to it; with a management
    // service it has no peers (nobody can connect) until the first network map.
    let tunnel = match &cfg.wireguard {
        Some(wg) => {
            let t = crate::tunnel::open(wg, &wg_private_key)?;
            if matches!(source, PolicySource::File(_)) {
                crate::tunnel::apply_static(&t, wg)?;
            }
            Some(t)
        }
        None => None,
    };
    for t in &cfg.interfaces.tunnel {
        attach::link_kind(&t.name)?;
    }
    for l in &cfg.interfaces.lan {
        attach::if_index(&l.name)?;
    }
    let listener = match cfg.metrics_addr {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("binding the metrics address {addr}"))?,
        ),
        None => None,
    };

    let opts = LoadOptions {
        limits: cfg.limits.clone(),
        conntrack: cfg.conntrack.enabled,
        timeouts: cfg.conntrack.timeouts,
        overlay_v4: cfg.overlay.ipv4,
        overlay_v6: cfg.overlay.ipv6,
        pin_root: cfg.pin_dir.clone(),
        tc_links: cfg.interfaces.tc_links,
    };
    let mut dp = Dataplane::load(&opts)?;
    if let Some(generation) = dp.adopted() {
        info!(pin_dir = ?cfg.pin_dir, generation, "adopted the pinned data plane: its policy and flows stay in force while this process takes over");
    }
    // Until the first network map, an adopted policy stays in force (a restart must not cut the
    // flows it allows); a new data plane starts with nothing allowed.
    let keep_adopted = dp.adopted().is_some() && matches!(source, PolicySource::Management(_));
    let report = if keep_adopted {
        None
    } else {
        Some(dp.apply(&compiled)?)
    };
    let wg_port = tunnel
        .as_ref()
        .and_then(|t| t.report().ok())
        .map(|r| r.listen_port)
        .or(cfg.wireguard.as_ref().map(|w| w.listen_port));
    if let Err(e) = attach_all(&mut dp, &cfg, wg_port) {
        // Nothing half-done: what this run attached is removed again; adopted links keep
        // enforcing the policy they had.
        for err in dp.abandon_start() {
            error!("undoing the start: {err}");
        }
        return Err(e);
    }
    // Every interface runs this process's programs now: what an earlier release's tables of
    // another layout gained meanwhile is carried over, and they are unpinned. Failing, they
    // stay pinned for the next start; the data plane enforces either way.
    if let Err(e) = dp.finish_carry_over() {
        warn!("carrying an earlier release's flow tables over: {e:#}");
    }
    let logger = aya_log::EbpfLogger::init(dp.ebpf_mut()).context("kernel log channel")?;
    let metrics = Metrics::new()?;
    metrics.apply_seconds.set(started.elapsed().as_secs_f64());
    let last_reload = match (&report, &source) {
        (Some(report), _) => {
            metrics.reloads.with_label_values(&["ok"]).inc();
            info!(
                policy = %source.label(),
                generation = report.generation,
                rules = report.rules,
                verdicts = report.stats.verdicts,
                "policy applied in {:?}",
                started.elapsed()
            );
            match &source {
                PolicySource::File(_) => format!("ok: generation {} at start", report.generation),
                PolicySource::Management(_) => {
                    "waiting for the first network map (default deny until then)".to_string()
                }
            }
        }
        (None, _) => format!(
            "adopted generation {} from the previous run; it stays in force until the first network map",
            dp.generation()
        ),
    };
    let management = match &source {
        PolicySource::Management(m) => Some(status::ManagementReport {
            url: m.url.clone(),
            ..Default::default()
        }),
        PolicySource::File(_) => None,
    };
    let gw = Arc::new(Mutex::new(Gateway {
        masquerading: cfg
            .masquerade
            .as_ref()
            .is_some_and(|m| !m.networks.is_empty()),
        dp,
        cfg,
        config_path: config_path.to_path_buf(),
        metrics,
        source: source.label(),
        last_reload,
        serial: 0,
        management,
        recheck: None,
        map_masquerade: Vec::new(),
        tunnel,
    }));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let events = match (source, identity) {
            (PolicySource::Management(opts), Some(identity)) => {
                let (tx, rx) = tokio::sync::mpsc::channel(8);
                info!(url = %opts.url, public_key = %identity.key.public(), "following the management service");
                tokio::spawn(sync::run(opts, identity, tx));
                Some(rx)
            }
            _ => None,
        };
        serve(gw.clone(), logger, listener, events).await
    });
    let mut g = lock(&gw);
    match g.dp.pin_root().map(Path::to_path_buf) {
        Some(root) if !detach_on_exit => {
            info!(pin_dir = %root.display(), generation = g.dp.generation(), "exiting; the data plane stays pinned and enforcing this policy (`gateway detach` removes it)");
        }
        _ => {
            for e in g.dp.detach_all() {
                error!("detach failed: {e}");
            }
            if let Some(root) = g.dp.pin_root().map(Path::to_path_buf)
                && let Err(e) = gateway_dataplane::pins::PinDir::remove_all(&root)
            {
                error!("removing the pinned maps: {e:#}");
            }
            info!("detached from all interfaces; exiting");
        }
    }
    result
}

/// The shared state. A handler that panicked leaves it usable: the data plane's state lives in
/// the kernel, and exiting over a poisoned lock would only stop the controller.
fn lock<T>(gw: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    gw.lock().unwrap_or_else(|poisoned| {
        warn!("a handler panicked while holding the gateway state; carrying on");
        gw.clear_poison();
        poisoned.into_inner()
    })
}

/// Puts the masquerade in force for the configured networks and `from_map` (the routes this
/// peer serves with `Masquerade` set), attaching it to the LAN interfaces the first time there
/// is something to masquerade (`attached` remembers). An empty list stops new translations.
fn masquerade(
    dp: &mut Dataplane,
    cfg: &Config,
    from_map: &[ipnet::IpNet],
    attached: &mut bool,
) -> anyhow::Result<()> {
    let mut networks: Vec<ipnet::IpNet> = cfg
        .masquerade
        .as_ref()
        .map(|m| m.networks.clone())
        .unwrap_or_default();
    for n in from_map {
        if !networks.contains(n) {
            networks.push(*n);
        }
    }
    if networks.is_empty() && !*attached {
        return Ok(());
    }
    if !networks.is_empty() && cfg.interfaces.lan.is_empty() {
        anyhow::bail!("masquerade for {networks:?} needs a LAN interface in the configuration");
    }
    let mut nat = match &cfg.masquerade {
        Some(m) => m.dataplane()?,
        None => gateway_dataplane::Masquerade {
            networks: Vec::new(),
            settings: Default::default(),
        },
    };
    nat.networks = networks;
    if !nat.networks.is_empty() {
        reserve_ports(nat.settings.port_min, nat.settings.port_max)?;
    }
    dp.set_masquerade(&nat)?;
    if !*attached {
        for l in &cfg.interfaces.lan {
            let a = dp.attach_masquerade(&l.name)?;
            let v4 = if a.has_v4 != 0 {
                std::net::Ipv4Addr::from(a.v4).to_string()
            } else {
                "-".into()
            };
            let v6 = if a.has_v6 != 0 {
                std::net::Ipv6Addr::from(a.v6).to_string()
            } else {
                "-".into()
            };
            info!(interface = %l.name, ipv4 = %v4, ipv6 = %v6, ports = %format!("{}-{}", nat.settings.port_min, nat.settings.port_max), "masquerading toward the LAN");
        }
        *attached = true;
    }
    info!(networks = ?nat.networks, "masqueraded networks");
    Ok(())
}

/// Gives the host back the ports of a masquerade range this gateway reserved (see
/// [`reserve_ports`]), except those of `keep` (the range in force now).
fn unreserve_ports(min: u16, max: u16, keep: Option<(u16, u16)>) -> anyhow::Result<()> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
    let current = std::fs::read_to_string(PATH).with_context(|| format!("reading {PATH}"))?;
    let mut ranges = port_ranges::without(&port_ranges::parse(&current)?, (min, max));
    ranges.extend(keep);
    std::fs::write(PATH, port_ranges::format(&ranges))
        .with_context(|| format!("writing {PATH}"))?;
    Ok(())
}

/// The kernel's port-range lists (`ip_local_reserved_ports`: "a-b,c"; it merges adjacent ranges
/// when it prints them, so ranges are compared by their ports, never by their text).
mod port_ranges {
    pub fn parse(text: &str) -> anyhow::Result<Vec<(u16, u16)>> {
        text.trim()
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(|r| {
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                Ok((a.trim().parse()?, b.trim().parse()?))
            })
            .collect()
    }

    pub fn format(ranges: &[(u16, u16)]) -> String {
        ranges
            .iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether every port of `r` is in one of `ranges`.
    pub fn covers(ranges: &[(u16, u16)], r: (u16, u16)) -> bool {
        (r.0..=r.1).all(|p| ranges.iter().any(|(a, b)| (*a..=*b).contains(&p)))
    }

    /// `ranges` with the ports of `cut` taken out.
    pub fn without(ranges: &[(u16, u16)], cut: (u16, u16)) -> Vec<(u16, u16)> {
        let mut out = Vec::new();
        for &(a, b) in ranges {
            if b < cut.0 || a > cut.1 {
                out.push((a, b));
                continue;
            }
            if a < cut.0 {
                out.push((a, cut.0 - 1));
            }
            if b > cut.1 {
                out.push((cut.1 + 1, b));
            }
        }
        out
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn merged_ranges_are_read_and_cut_by_their_ports() {
            let r = parse("25000-26099, 8080\n").unwrap();
            assert_eq!(r, vec![(25000, 26099), (8080, 8080)]);
            assert!(covers(&r, (26000, 26099)) && !covers(&r, (26000, 26100)));
            assert_eq!(format(&without(&r, (25000, 25999))), "26000-26099,8080");
            assert_eq!(
                format(&without(&r, (25100, 25199))),
                "25000-25099,25200-26099,8080"
            );
            assert_eq!(without(&r, (1, 2)), r);
            assert_eq!(parse("").unwrap(), vec![]);
        }
    }
}

/// Whether two configuration sections differ, compared as their serialized form (the config
/// types need no PartialEq of their own for it).
fn differs<T: serde::Serialize>(a: &T, b: &T) -> bool {
    serde_json::to_value(a).ok() != serde_json::to_value(b).ok()
}

/// Keeps the host's own sockets off the masquerade ports (net.ipv4.ip_local_reserved_ports,
/// which also covers IPv6), adding the range to whatever is reserved already.
fn reserve_ports(min: u16, max: u16) -> anyhow::Result<()> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
    let current = std::fs::read_to_string(PATH).with_context(|| format!("reading {PATH}"))?;
    let mut ranges = port_ranges::parse(&current)?;
    if port_ranges::covers(&ranges, (min, max)) {
        return Ok(());
    }
    ranges.push((min, max));
    std::fs::write(PATH, port_ranges::format(&ranges))
        .with_context(|| format!("writing {PATH}"))?;
    Ok(())
}

/// Attaches every configured interface, enables XDP forwarding where configured, and releases
/// pinned links that the configuration no longer names.
fn attach_all(dp: &mut Dataplane, cfg: &Config, wg_port: Option<u16>) -> anyhow::Result<()> {
    for t in &cfg.interfaces.tunnel {
        let kind = dp.attach_tunnel(&t.name, t.mss_clamp.tunnel_mss())?;
        let mss = dp
            .mss_clamp(&t.name)?
            .map(|c| format!("{} (IPv6 {})", c.v4, c.v6))
            .unwrap_or_else(|| "off".into());
        info!(interface = %t.name, link = ?kind, mss_clamp = %mss, "tunnel interface protected (tc ingress + egress)");
    }
    for l in &cfg.interfaces.lan {
        let mode = dp.attach_lan(&l.name, l.attach_mode())?;
        info!(interface = %l.name, mode, "LAN interface attached");
    }
    if !cfg.interfaces.underlay.is_empty() {
        let mut ports: Vec<u16> = Vec::new();
        for u in &cfg.interfaces.underlay {
            let mine = if u.ports.is_empty() {
                wg_port.into_iter().collect()
            } else {
                u.ports.clone()
            };
            anyhow::ensure!(
                !mine.is_empty(),
                "interfaces.underlay {}: no WireGuard port to protect",
                u.name
            );
            ports.extend(mine);
        }
        ports.sort();
        ports.dedup();
        // The ports and rates are in force before the program sees a packet.
        dp.set_underlay(&ports, cfg.underlay_filter.settings())?;
        for u in &cfg.interfaces.underlay {
            let mode = dp.attach_underlay(&u.name, u.attach)?;
            info!(interface = %u.name, mode, ports = ?ports, "underlay filter: only WireGuard messages reach these ports, handshake initiations rate-limited");
        }
    }
    masquerade(dp, cfg, &[], &mut false)?;
    if cfg.interfaces.tunnel_forward == crate::config::TunnelForward::Tc {
        let lan: Vec<String> = cfg.interfaces.lan.iter().map(|l| l.name.clone()).collect();
        let tunnels: Vec<String> = cfg
            .interfaces
            .tunnel
            .iter()
            .map(|t| t.name.clone())
            .collect();
        dp.enable_tc_forward(&lan, &tunnels)?;
        info!(lan = ?lan, tunnels = ?tunnels, "tunnel traffic to the LAN is forwarded in TC, and LAN traffic to the tunnels from LAN interfaces attached at TC");
    }
    for name in dp.release_unclaimed_links()? {
        info!(link = %name, "detached a pinned link the configuration no longer names");
    }
    let forwarders: Vec<String> = cfg
        .interfaces
        .lan
        .iter()
        .filter(|l| l.forward == crate::config::Forwarding::Xdp)
        .map(|l| l.name.clone())
        .collect();
    if !forwarders.is_empty() {
        dp.enable_xdp_forward(&forwarders)?;
        info!(interfaces = ?forwarders, "XDP forwarding between these LAN interfaces");
        for name in forwarders
            .iter()
            .filter(|n| attach::driver(n).is_ok_and(|d| d == "veth"))
        {
            info!(
                interface = %name,
                "XDP forwarding from a veth: frames whose TCP/UDP checksum a sender on this host left to offload \
                 (the veth default) go to the kernel, which completes it (counted as partial_checksum); \
                 the others are forwarded in XDP"
            );
        }
        // What the kernel says of the tunnels as XDP redirect targets, for the operator: the
        // LAN program hands traffic into a tunnel to the kernel stack either way.
        for t in &cfg.interfaces.tunnel {
            let why = match attach::if_index(&t.name)
                .and_then(gateway_dataplane::xdp_features::takes_redirects)
            {
                Ok(None) => {
                    "this kernel (before 6.3) does not say whether it takes XDP redirects into it"
                        .to_string()
                }
                Ok(Some(false)) => {
                    "the kernel takes no XDP redirects into it (its xdp-features lack \
                     ndo-xmit: kernel WireGuard has none, a TUN announces none)"
                        .to_string()
                }
                Ok(Some(true)) => "the kernel would take XDP redirects into it, but the tunnel's \
                     egress program must see the traffic (it clamps MSS)"
                    .to_string(),
                Err(e) => format!("its XDP features cannot be read: {e:#}"),
            };
            info!(
                interface = %t.name,
                "LAN traffic into this tunnel goes to the kernel stack (left_to_kernel): {why}"
            );
        }
    }
    Ok(())
}

async fn serve(
    gw: Arc<Mutex<Gateway>>,
    logger: aya_log::EbpfLogger<&'static dyn log::Log>,
    listener: Option<std::net::TcpListener>,
    mut events: Option<tokio::sync::mpsc::Receiver<sync::Event>>,
) -> anyhow::Result<()> {
    if let Some(l) = listener {
        l.set_nonblocking(true)?;
        let l = tokio::net::TcpListener::from_std(l)?;
        info!(addr = %l.local_addr()?, "serving /metrics and /status");
        tokio::spawn(http(gw.clone(), l));
    }
    // SAFETY: the logger owns its ring-buffer fd and keeps it open for as long as the AsyncFd
    // that owns the logger lives.
    let mut logs = unsafe { AsyncFd::register(logger) }
        .map_err(|e| anyhow::anyhow!("watching the kernel log channel: {e}"))?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    // The sweep walks the whole conntrack map: it runs on a blocking thread with a handle of its
    // own, never holding the state that packets' policy changes and scrapes need.
    let mut sweeper = Some(lock(&gw).dp.sweeper()?);
    let mut sweeping: Option<tokio::task::JoinHandle<(Sweeper, anyhow::Result<SweepReport>)>> =
        None;
    loop {
        tokio::select! {
            _ = hup.recv() => reload(&gw),
            Some(event) = next_event(&mut events) => on_sync_event(&gw, event)?,
            _ = sweep.tick(), if sweeper.is_some() => {
                let (recheck, generation) = {
                    let mut g = lock(&gw);
                    (g.recheck.take(), g.dp.generation())
                };
                let mut s = sweeper.take().expect("checked by the guard");
                sweeping = Some(tokio::task::spawn_blocking(move || {
                    let r = s.sweep(generation, recheck.as_ref());
                    (s, r)
                }));
            }
            Some(done) = finished(&mut sweeping) => {
                let (s, result) = done.map_err(|e| anyhow::anyhow!("conntrack sweep task: {e}"))?;
                sweeper = Some(s);
                let mut g = lock(&gw);
                match result {
                    Ok(r) => {
                        g.dp.record_sweep(&r);
                        g.metrics.count_sweep(&r);
                    }
                    Err(e) => warn!("conntrack sweep failed: {e:#}"),
                }
            }
            _ = int.recv() => break,
            _ = term.recv() => break,
            guard = logs.readable_mut() => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        }
    }
    Ok(())
}

/// The result of a running blocking task, once; never resolves when there is none.
async fn finished<T>(
    task: &mut Option<tokio::task::JoinHandle<T>>,
) -> Option<Result<T, tokio::task::JoinError>> {
    match task {
        Some(handle) => {
            let result = handle.await;
            *task = None;
            Some(result)
        }
        None => std::future::pending().await,
    }
}

/// The next event from the sync task; never resolves when there is none.
async fn next_event(
    events: &mut Option<tokio::sync::mpsc::Receiver<sync::Event>>,
) -> Option<sync::Event> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A message from the management client. Only PermissionDenied ends the gateway.
fn on_sync_event(gw: &Arc<Mutex<Gateway>>, event: sync::Event) -> anyhow::Result<()> {
    let mut g = lock(gw);
    let g = &mut *g;
    match event {
        sync::Event::Connected(up) => {
            g.metrics.management.connected.set(up as i64);
            if let Some(m) = g.management.as_mut() {
                m.connected = up;
            }
        }
        sync::Event::Rejected(why) => {
            g.metrics.management.synced();
            g.metrics
                .management
                .maps
                .with_label_values(&["rejected"])
                .inc();
            g.last_reload = format!("rejected, serial {} stays in force: {why}", g.serial);
            warn!(
                "network map rejected, serial {} stays in force: {why}",
                g.serial
            );
        }
        sync::Event::Fatal(why) => {
            // The peer is gone (or never was): whatever its last map allowed no longer holds.
            // Enforcement continues with nothing allowed, never with no filter; the process
            // stays up so that logs, metrics and status say why.
            let deny_all = compile::compile(
                &policy::PolicySet::default(),
                &g.cfg.limits.compile_limits(),
            )?;
            let r = g.dp.apply(&deny_all)?;
            g.recheck = Some(deny_all);
            if let Some(t) = &g.tunnel
                && let Err(e) = crate::tunnel::remove_all_peers(t)
            {
                error!("removing the WireGuard peers: {e:#}");
            }
            g.metrics.management.refused.set(1);
            g.metrics.management.connected.set(0);
            if let Some(m) = g.management.as_mut() {
                m.connected = false;
                m.refused = Some(why.clone());
            }
            g.last_reload = format!(
                "refused by the management service ({why}); deny-all in force as generation {}",
                r.generation
            );
            error!(
                generation = r.generation,
                "the management service refused this gateway: {why}; deny-all in force (re-enroll with a new setup key and restart)"
            );
        }
        sync::Event::Map(map, received) => {
            g.metrics.management.synced();
            if map.serial <= g.serial {
                g.metrics
                    .management
                    .maps
                    .with_label_values(&["stale"])
                    .inc();
                info!(
                    serial = map.serial,
                    "network map not newer than serial {}; ignored", g.serial
                );
                return Ok(());
            }
            let skipped = &map.skipped;
            if skipped.dynamic_route_rules + skipped.unsupported_accepts > 0 {
                warn!(
                    domain_route_rules = skipped.dynamic_route_rules,
                    custom_protocol_accepts = skipped.unsupported_accepts,
                    "network map serial {} has rules the data plane cannot enforce; they are left out (their traffic stays denied)",
                    map.serial
                );
            }
            let applied = compile::compile(&map.policy, &g.cfg.limits.compile_limits())
                .map_err(anyhow::Error::from)
                .and_then(|c| {
                    // Translation is in place before the policy that lets the traffic through.
                    if map.masquerade != g.map_masquerade {
                        let g = &mut *g;
                        masquerade(&mut g.dp, &g.cfg, &map.masquerade, &mut g.masquerading)?;
                        g.map_masquerade = map.masquerade.clone();
                    }
                    let report = g.dp.apply(&c)?;
                    // Peers after the policy that governs their traffic; a peer set that fails
                    // part-way is retried from what the interface has with the next map.
                    let g = &mut *g;
                    if let Some(t) = &g.tunnel {
                        crate::tunnel::apply_map(
                            t,
                            &mut g.dp,
                            &g.cfg,
                            &map.interface_addresses,
                            map.mtu,
                            &map.peers,
                        )
                        .context("the policy is applied, the WireGuard interface is not")?;
                    }
                    Ok((report, c))
                });
            match applied {
                Ok((r, compiled)) => {
                    let took = received.elapsed();
                    g.serial = map.serial;
                    g.recheck = Some(compiled);
                    if let Some(m) = g.management.as_mut() {
                        m.serial = map.serial;
                        m.overlay_address = Some(map.own_address.to_string());
                    }
                    g.metrics.management.serial.set(map.serial as i64);
                    g.metrics
                        .management
                        .maps
                        .with_label_values(&["applied"])
                        .inc();
                    g.metrics
                        .management
                        .apply_seconds
                        .observe(took.as_secs_f64());
                    g.metrics.apply_seconds.set(took.as_secs_f64());
                    g.last_reload = format!(
                        "ok: network map serial {} as generation {} ({} rules) applied in {took:?}",
                        map.serial, r.generation, r.rules
                    );
                    info!(
                        serial = map.serial,
                        generation = r.generation,
                        rules = r.rules,
                        own_address = %map.own_address,
                        entries_written = r.entries.written,
                        entries_removed = r.entries.removed,
                        entries_unchanged = r.entries.unchanged,
                        "network map applied in {took:?}"
                    );
                }
                Err(e) => {
                    g.metrics
                        .management
                        .maps
                        .with_label_values(&["rejected"])
                        .inc();
                    g.last_reload = format!("rejected, serial {} stays in force: {e:#}", g.serial);
                    warn!(
                        "network map serial {} rejected, serial {} stays in force: {e:#}",
                        map.serial, g.serial
                    );
                }
            }
        }
    }
    Ok(())
}

/// SIGHUP: re-read the policy file; a bad file is rejected whole and the old policy stays.
/// SIGHUP: the configuration's `masquerade:` section (networks, port range) and the policy file
/// are read again and put in force; a section that does not read or apply is rejected whole and
/// the one in force stays. Other sections need a restart (the log says which changed).
fn reload(gw: &Arc<Mutex<Gateway>>) {
    let mut g = lock(gw);
    let g = &mut *g;
    match Config::load(&g.config_path) {
        Ok(new) => {
            if differs(&new.masquerade, &g.cfg.masquerade) {
                let old_range = g.cfg.masquerade.as_ref().and_then(|m| m.port_range().ok());
                let mut candidate = g.cfg.clone();
                candidate.masquerade = new.masquerade.clone();
                match masquerade(
                    &mut g.dp,
                    &candidate,
                    &g.map_masquerade,
                    &mut g.masquerading,
                ) {
                    Ok(()) => {
                        let new_range = new.masquerade.as_ref().and_then(|m| m.port_range().ok());
                        if let Some((min, max)) = old_range.filter(|r| Some(*r) != new_range) {
                            // Translations in the old range run out by themselves; the host may
                            // have those ports back.
                            if let Err(e) = unreserve_ports(min, max, new_range) {
                                warn!(
                                    "masquerade: the old port range {min}-{max} stays reserved: {e:#}"
                                );
                            }
                        }
                        g.cfg.masquerade = new.masquerade.clone();
                        g.last_reload = "ok: masquerade reloaded".to_string();
                        info!("SIGHUP: masquerade reloaded");
                    }
                    Err(e) => {
                        g.metrics.reloads.with_label_values(&["error"]).inc();
                        g.last_reload =
                            format!("masquerade rejected, the one in force stays: {e:#}");
                        warn!("masquerade reload rejected, the one in force stays: {e:#}");
                        // Back to what was in force (a failure may have come half way).
                        let current = g.cfg.clone();
                        if let Err(e) =
                            masquerade(&mut g.dp, &current, &g.map_masquerade, &mut g.masquerading)
                        {
                            warn!("masquerade: restoring the previous settings failed: {e:#}");
                        }
                        return;
                    }
                }
            }
            let others: Vec<&str> = [
                ("interfaces", differs(&new.interfaces, &g.cfg.interfaces)),
                ("wireguard", differs(&new.wireguard, &g.cfg.wireguard)),
                ("conntrack", differs(&new.conntrack, &g.cfg.conntrack)),
                ("overlay", differs(&new.overlay, &g.cfg.overlay)),
            ]
            .into_iter()
            .filter_map(|(name, differs)| differs.then_some(name))
            .collect();
            if !others.is_empty() {
                warn!(sections = ?others, "SIGHUP: these configuration sections changed and take effect at the next start");
            }
        }
        Err(e) => {
            g.metrics.reloads.with_label_values(&["error"]).inc();
            g.last_reload = format!("configuration rejected, everything in force stays: {e:#}");
            warn!("configuration reload rejected, everything in force stays: {e:#}");
            return;
        }
    }
    let Some(file) = g.cfg.policy.clone() else {
        info!("SIGHUP: the policy comes from the management service; nothing to reload");
        return;
    };
    let started = Instant::now();
    let old = g.dp.generation();
    let applied = compile_policy(&g.cfg, &file).and_then(|c| {
        let report = g.dp.apply(&c)?;
        Ok((report, c))
    });
    match applied {
        Ok((r, compiled)) => {
            g.recheck = Some(compiled);
            g.metrics.reloads.with_label_values(&["ok"]).inc();
            g.metrics.apply_seconds.set(started.elapsed().as_secs_f64());
            g.last_reload = format!(
                "ok: generation {} ({} policies) applied in {:?}",
                r.generation,
                r.rules,
                started.elapsed()
            );
            info!(
                generation = r.generation,
                rules = r.rules,
                "policy reloaded in {:?}",
                started.elapsed()
            );
        }
        Err(e) => {
            g.metrics.reloads.with_label_values(&["error"]).inc();
            g.last_reload = format!("rejected, generation {old} stays in force: {e:#}");
            warn!("policy reload rejected, generation {old} stays in force: {e:#}");
        }
    }
}

async fn http(gw: Arc<Mutex<Gateway>>, listener: tokio::net::TcpListener) {
    use axum::{Router, http::StatusCode, response::IntoResponse, routing::get};
    let metrics_gw = gw.clone();
    let app =
        Router::new()
            .route(
                "/metrics",
                get(move || {
                    let gw = metrics_gw.clone();
                    async move {
                        // Reading the kernel counters takes a syscall per counter: off the runtime.
                        let rendered = tokio::task::spawn_blocking(move || {
                            let mut g = lock(&gw);
                            let g = &mut *g;
                            if let Some(t) = &g.tunnel {
                                g.metrics.wireguard.refresh(&t.report()?);
                            }
                            g.metrics.refresh(&g.dp).and_then(|_| g.metrics.render())
                        })
                        .await
                        .unwrap_or_else(|e| Err(anyhow::anyhow!("metrics task: {e}")));
                        match rendered {
                            Ok(text) => (
                                StatusCode::OK,
                                [("content-type", "text/plain; version=0.0.4")],
                                text,
                            )
                                .into_response(),
                            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
                                .into_response(),
                        }
                    }
                }),
            )
            .route(
                "/status",
                get(move || {
                    let gw = gw.clone();
                    async move {
                        let report = tokio::task::spawn_blocking(move || {
                            let g = lock(&gw);
                            let wireguard = g.tunnel.as_ref().map(|t| t.report()).transpose()?;
                            status::report(
                                &g.dp,
                                &g.source,
                                &g.last_reload,
                                g.management.clone(),
                                wireguard,
                            )
                        })
                        .await
                        .unwrap_or_else(|e| Err(anyhow::anyhow!("status task: {e}")));
                        match report {
                            Ok(r) => (
                                StatusCode::OK,
                                [("content-type", "application/json")],
                                serde_json::to_string_pretty(&r).unwrap_or_default(),
                            )
                                .into_response(),
                            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
                                .into_response(),
                        }
                    }
                }),
            );
    if let Err(e) = axum::serve(listener, app).await {
        error!("metrics server stopped: {e}");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_panicked_handler_does_not_take_the_controller_down() {
        let state = Arc::new(Mutex::new(1u32));
        let s = state.clone();
        let _ = std::thread::spawn(move || {
            let mut g = s.lock().unwrap();
            *g = 2;
            panic!("a handler bug");
        })
        .join();
        assert!(state.is_poisoned());
        assert_eq!(*super::lock(&state), 2, "the state is still there");
        assert!(!state.is_poisoned(), "and usable without another warning");
    }
}
