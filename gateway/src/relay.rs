//! `gateway relay serve`: the TURN relay (gateway-relay) from its own YAML or from coturn's
//! turnserver.conf, until SIGINT/SIGTERM.

use std::path::Path;

use anyhow::Context as _;
use tracing::{info, warn};

use gateway_relay::{config::RelayConfig, server::Relay};

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
    let relay = Relay::new(cfg)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            r = relay.clone().serve() => r,
            _ = term.recv() => { info!("SIGTERM: relay stopping"); Ok(()) }
            _ = int.recv() => { info!("SIGINT: relay stopping"); Ok(()) }
        }
    })
}
