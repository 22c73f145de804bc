//! `gateway management serve`: runs the embedded management service until SIGINT/SIGTERM.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

/// How the listener speaks: TLS with a certificate, or plain HTTP (asked for by name).
pub enum Transport {
    Tls(management::tls::TlsFiles),
    PlainHttp,
}

pub fn serve(
    options: management::Options,
    listen: SocketAddr,
    transport: Transport,
) -> anyhow::Result<()> {
    crate::runner::init_tracing();
    let m = Arc::new(management::Management::open(&options)?);
    let tls = match transport {
        Transport::Tls(files) => {
            // Checked before binding, so a bad pair is reported plainly.
            management::tls::load(&files)?;
            Some(files)
        }
        Transport::PlainHttp => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("bind {listen}"))?;
        info!(
            addr = %listener.local_addr()?,
            scheme = if tls.is_some() { "https" } else { "http (plain, as asked)" },
            data_dir = %options.data_dir.display(),
            server_key = %m.key.public(),
            serial = m.read(|a| a.serial),
            "management service: REST under /api, gRPC ManagementService"
        );
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let shutdown = async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        };
        management::serve(m, listener, tls, shutdown).await
    })
}
