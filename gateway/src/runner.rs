//! `gateway run`: load, attach, enforce; reload the policy on SIGHUP; detach on exit.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::Context as _;
use tokio::{io::unix::AsyncFd, signal::unix::{SignalKind, signal}};
use tracing::{error, info, warn};

use crate::{
    compile,
    config::Config,
    dataplane::{Dataplane, LoadOptions, attach},
    metrics::Metrics,
    policy, status,
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
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // try_init also routes the `log` records of aya-log (the kernel programs' logs) into tracing.
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).try_init();
}

/// Reads and compiles a policy file.
fn compile_policy(cfg: &Config, file: &Path) -> anyhow::Result<compile::Compiled> {
    let set = policy::load_file(file)?;
    Ok(compile::compile(&set, &cfg.limits.compile_limits()).with_context(|| format!("{}", file.display()))?)
}

/// Picks the policy source: the config's policy file or a management service, never both.
pub fn policy_source(cfg: &Config, management: Option<SyncOptions>) -> anyhow::Result<PolicySource> {
    match (&cfg.policy, management) {
        (Some(_), Some(_)) => anyhow::bail!("the config names a policy file and --management-url was given: choose one policy source"),
        (Some(p), None) => Ok(PolicySource::File(p.clone())),
        (None, Some(m)) => Ok(PolicySource::Management(m)),
        (None, None) => anyhow::bail!("no policy source: name `policy:` in the config or give --management-url"),
    }
}

pub fn run(config_path: &Path, metrics_override: Option<SocketAddr>, management: Option<SyncOptions>) -> anyhow::Result<()> {
    init_tracing();
    let mut cfg = Config::load(config_path)?;
    if metrics_override.is_some() {
        cfg.metrics_addr = metrics_override;
    }
    let source = policy_source(&cfg, management)?;
    // Everything that can be checked is checked before the kernel is touched.
    let started = Instant::now();
    let (compiled, identity) = match &source {
        PolicySource::File(file) => (compile_policy(&cfg, file)?, None),
        PolicySource::Management(m) => {
            let identity = Identity::load_or_create(&m.state_dir)?;
            if !identity.is_registered() && m.setup_key.is_none() {
                anyhow::bail!("this gateway is not registered yet: give a setup key (--setup-key, --setup-key-file or GATEWAY_SETUP_KEY)");
            }
            // Until the first network map arrives, nothing from the tunnel is allowed.
            let empty = compile::compile(&policy::PolicySet::default(), &cfg.limits.compile_limits())?;
            (empty, Some(identity))
        }
    };
    for t in &cfg.interfaces.tunnel {
        attach::link_kind(&t.name)?;
    }
    for l in &cfg.interfaces.lan {
        attach::if_index(&l.name)?;
    }
    let listener = match cfg.metrics_addr {
        Some(addr) => Some(std::net::TcpListener::bind(addr).with_context(|| format!("binding the metrics address {addr}"))?),
        None => None,
    };

    let opts = LoadOptions {
        limits: cfg.limits.clone(),
        conntrack: cfg.conntrack.enabled,
        timeouts: cfg.conntrack.timeouts,
        overlay_v4: cfg.overlay.ipv4,
        overlay_v6: cfg.overlay.ipv6,
    };
    let mut dp = Dataplane::load(&opts)?;
    let report = dp.apply(&compiled)?;
    // On any error below, dropping `dp` detaches what was attached: nothing is left half-done.
    for t in &cfg.interfaces.tunnel {
        let kind = dp.attach_tunnel(&t.name)?;
        info!(interface = %t.name, link = ?kind, "tunnel interface protected (tc ingress + egress)");
    }
    for l in &cfg.interfaces.lan {
        let mode = dp.attach_lan(&l.name, l.attach)?;
        info!(interface = %l.name, mode, "LAN interface attached");
    }
    let forwarders: Vec<String> =
        cfg.interfaces.lan.iter().filter(|l| l.forward == crate::config::Forwarding::Xdp).map(|l| l.name.clone()).collect();
    if !forwarders.is_empty() {
        dp.enable_xdp_forward(&forwarders)?;
        info!(interfaces = ?forwarders, "XDP forwarding between these LAN interfaces");
        for name in forwarders.iter().filter(|n| crate::dataplane::attach::driver(n).is_ok_and(|d| d == "veth")) {
            warn!(
                interface = %name,
                "XDP forwarding from a veth: senders on this host that leave checksums to offload (the veth default) \
                 have their forwarded TCP/UDP frames dropped by the receiver; turn tx checksumming off on the sending \
                 ends, or leave forwarding to the kernel here"
            );
        }
    }
    let logger = aya_log::EbpfLogger::init(dp.ebpf_mut()).context("kernel log channel")?;
    let metrics = Metrics::new()?;
    metrics.apply_seconds.set(started.elapsed().as_secs_f64());
    metrics.reloads.with_label_values(&["ok"]).inc();
    info!(
        policy = %source.label(),
        generation = report.generation,
        rules = report.rules,
        verdicts = report.stats.verdicts,
        "policy applied in {:?}",
        started.elapsed()
    );
    let last_reload = match &source {
        PolicySource::File(_) => format!("ok: generation {} at start", report.generation),
        PolicySource::Management(_) => "waiting for the first network map (default deny until then)".to_string(),
    };
    let management = match &source {
        PolicySource::Management(m) => Some(status::ManagementReport { url: m.url.clone(), ..Default::default() }),
        PolicySource::File(_) => None,
    };
    let gw = Arc::new(Mutex::new(Gateway { dp, cfg, metrics, source: source.label(), last_reload, serial: 0, management, recheck: None }));

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
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
    let mut g = gw.lock().expect("gateway state");
    let errors = g.dp.detach_all();
    for e in &errors {
        error!("detach failed: {e}");
    }
    info!("detached from all interfaces; exiting");
    result
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
    let mut logs = unsafe { AsyncFd::register(logger) }.map_err(|e| anyhow::anyhow!("watching the kernel log channel: {e}"))?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = hup.recv() => reload(&gw),
            Some(event) = next_event(&mut events) => on_sync_event(&gw, event)?,
            _ = sweep.tick() => {
                let mut g = gw.lock().expect("gateway state");
                let recheck = g.recheck.take();
                match g.dp.sweep_conntrack(recheck.as_ref()) {
                    Ok(r) => g.metrics.count_sweep(&r),
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

/// The next event from the sync task; never resolves when there is none.
async fn next_event(events: &mut Option<tokio::sync::mpsc::Receiver<sync::Event>>) -> Option<sync::Event> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A message from the management client. Only PermissionDenied ends the gateway.
fn on_sync_event(gw: &Arc<Mutex<Gateway>>, event: sync::Event) -> anyhow::Result<()> {
    let mut g = gw.lock().expect("gateway state");
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
            g.metrics.management.maps.with_label_values(&["rejected"]).inc();
            g.last_reload = format!("rejected, serial {} stays in force: {why}", g.serial);
            warn!("network map rejected, serial {} stays in force: {why}", g.serial);
        }
        sync::Event::Fatal(why) => anyhow::bail!("the management service refused this gateway: {why}"),
        sync::Event::Map(map, received) => {
            g.metrics.management.synced();
            if map.serial <= g.serial {
                g.metrics.management.maps.with_label_values(&["stale"]).inc();
                info!(serial = map.serial, "network map not newer than serial {}; ignored", g.serial);
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
            let applied = compile::compile(&map.policy, &g.cfg.limits.compile_limits()).map_err(anyhow::Error::from).and_then(|c| {
                let report = g.dp.apply(&c)?;
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
                    g.metrics.management.maps.with_label_values(&["applied"]).inc();
                    g.metrics.management.apply_seconds.observe(took.as_secs_f64());
                    g.metrics.apply_seconds.set(took.as_secs_f64());
                    g.last_reload = format!("ok: network map serial {} as generation {} ({} rules) applied in {took:?}", map.serial, r.generation, r.rules);
                    info!(serial = map.serial, generation = r.generation, rules = r.rules, own_address = %map.own_address, "network map applied in {took:?}");
                }
                Err(e) => {
                    g.metrics.management.maps.with_label_values(&["rejected"]).inc();
                    g.last_reload = format!("rejected, serial {} stays in force: {e:#}", g.serial);
                    warn!("network map serial {} rejected, serial {} stays in force: {e:#}", map.serial, g.serial);
                }
            }
        }
    }
    Ok(())
}

/// SIGHUP: re-read the policy file; a bad file is rejected whole and the old policy stays.
fn reload(gw: &Arc<Mutex<Gateway>>) {
    let mut g = gw.lock().expect("gateway state");
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
            g.last_reload = format!("ok: generation {} ({} policies) applied in {:?}", r.generation, r.rules, started.elapsed());
            info!(generation = r.generation, rules = r.rules, "policy reloaded in {:?}", started.elapsed());
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
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let gw = metrics_gw.clone();
                async move {
                    let mut g = gw.lock().expect("gateway state");
                    let g = &mut *g;
                    match g.metrics.refresh(&g.dp).and_then(|_| g.metrics.render()) {
                        Ok(text) => (StatusCode::OK, [("content-type", "text/plain; version=0.0.4")], text).into_response(),
                        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")).into_response(),
                    }
                }
            }),
        )
        .route(
            "/status",
            get(move || {
                let gw = gw.clone();
                async move {
                    let g = gw.lock().expect("gateway state");
                    match status::report(&g.dp, &g.source, &g.last_reload, g.management.clone()) {
                        Ok(r) => (StatusCode::OK, [("content-type", "application/json")], serde_json::to_string_pretty(&r).unwrap_or_default()).into_response(),
                        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")).into_response(),
                    }
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        error!("metrics server stopped: {e}");
    }
}
