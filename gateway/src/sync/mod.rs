//! The gateway as a management client: log in (registering with a setup key the first time), then
//! follow the Sync stream and hand each network map, translated into a policy, to the runner.
//!
//! Trouble keeps the last policy in force: a broken stream or an unreachable server is retried
//! with exponential backoff and jitter; a map that does not open, decode or translate is rejected
//! whole and reported; PermissionDenied (deleted peer, revoked or used-up key) ends the gateway.

pub mod backoff;
pub mod identity;
pub mod translate;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use management_proto::{
    WgPublicKey,
    pb::{self, management_service_client::ManagementServiceClient},
};
use tokio::sync::mpsc;
use tonic::{
    Code, Status,
    transport::{Certificate, Channel, ClientTlsConfig},
};
use tracing::{info, warn};

pub use backoff::Backoff;
pub use identity::Identity;
pub use translate::{Translated, translate};

#[derive(Clone, Debug)]
pub struct SyncOptions {
    pub url: String,
    /// Needed only until the first successful registration.
    pub setup_key: Option<String>,
    pub state_dir: PathBuf,
    /// PEM certificates to trust for an https URL besides the system's roots (a private CA, a
    /// self-signed management certificate).
    pub ca_pem: Option<Vec<u8>>,
    /// Announce the IPv6 overlay capability: management then gives this peer an IPv6 overlay
    /// address (`PeerConfig.address_v6`), IPv6 AllowedIPs of its peers and IPv6 rules.
    pub ipv6_overlay: bool,
}

/// Whether the host can carry an IPv6 overlay: IPv6 is there and not switched off. Without it
/// an IPv6 interface address would fail to apply, and every map with it would be refused.
pub fn host_has_ipv6() -> bool {
    std::path::Path::new("/proc/net/if_inet6").exists()
        && std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6")
            .is_ok_and(|v| v.trim() == "0")
}

/// What the sync task tells the runner.
#[derive(Debug)]
pub enum Event {
    Connected(bool),
    /// A translated map and when its message arrived (for apply latency).
    Map(Box<Translated>, Instant),
    /// A message that could not be used; the policy in force stays.
    Rejected(String),
    /// The server refused this peer for good.
    Fatal(String),
}

enum SessionEnd {
    Retry(String),
    Fatal(String),
}

fn status_end(what: &str, s: Status) -> SessionEnd {
    let message = format!("{what}: {} ({:?})", s.message(), s.code());
    if s.code() == Code::PermissionDenied {
        SessionEnd::Fatal(message)
    } else {
        SessionEnd::Retry(message)
    }
}

/// Login refusals that retrying cannot fix: PermissionDenied (deleted peer, unknown peer without
/// a setup key, and this server's refused setup keys), and NotFound / FailedPrecondition, which a
/// NetBird server answers for an invalid setup key.
fn login_end(s: Status) -> SessionEnd {
    match s.code() {
        Code::PermissionDenied | Code::NotFound | Code::FailedPrecondition => {
            SessionEnd::Fatal(format!("Login: {} ({:?})", s.message(), s.code()))
        }
        _ => status_end("Login", s),
    }
}

/// An error and what caused it, e.g. "transport error: invalid peer certificate: UnknownIssuer"
/// (tonic's transport error alone says only "transport error").
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.ends_with(&c_text) {
            text = format!("{text}: {c_text}");
        }
        cause = c.source();
    }
    text
}

fn system_meta(ipv6_overlay: bool) -> pb::PeerSystemMeta {
    let uname = uname();
    let mut capabilities = vec![pb::PeerCapability::SourcePrefixes as i32];
    if ipv6_overlay {
        capabilities.push(pb::PeerCapability::IPv6Overlay as i32);
    }
    pb::PeerSystemMeta {
        hostname: uname.0,
        go_os: "linux".into(),
        kernel: "Linux".into(),
        kernel_version: uname.1,
        os: "linux".into(),
        netbird_version: format!("gateway-{}", env!("CARGO_PKG_VERSION")),
        capabilities,
        ..Default::default()
    }
}

/// Hostname and kernel release.
fn uname() -> (String, String) {
    // SAFETY: uname fills the struct it is given; zeroed is a valid initial value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return ("gateway".into(), String::new());
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    (field(&u.nodename), field(&u.release))
}

struct Session<'a> {
    opts: &'a SyncOptions,
    identity: &'a Identity,
    events: &'a mpsc::Sender<Event>,
    backoff: &'a mut Backoff,
}

impl Session<'_> {
    async fn connect(&self) -> Result<ManagementServiceClient<Channel>, SessionEnd> {
        let endpoint = Channel::from_shared(self.opts.url.clone())
            .map_err(|e| SessionEnd::Fatal(format!("management URL {:?}: {e}", self.opts.url)))?
            .connect_timeout(Duration::from_secs(5))
            // Notice a vanished server on an idle stream.
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let endpoint = if self.opts.url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new().with_native_roots();
            if let Some(pem) = &self.opts.ca_pem {
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            endpoint
                .tls_config(tls)
                .map_err(|e| SessionEnd::Fatal(format!("TLS for {}: {e}", self.opts.url)))?
        } else {
            endpoint
        };
        let channel = endpoint.connect().await.map_err(|e| {
            SessionEnd::Retry(format!("connect to {}: {}", self.opts.url, with_causes(&e)))
        })?;
        Ok(ManagementServiceClient::new(channel)
            .max_decoding_message_size(management_proto::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(management_proto::MAX_MESSAGE_SIZE))
    }

    async fn run(&mut self) -> SessionEnd {
        let mut client = match self.connect().await {
            Ok(c) => c,
            Err(e) => return e,
        };
        let server = match client.get_server_key(pb::Empty {}).await {
            Ok(r) => match WgPublicKey::from_base64(&r.get_ref().key) {
                Ok(k) => k,
                Err(e) => return SessionEnd::Retry(format!("server key: {e}")),
            },
            Err(s) => return status_end("GetServerKey", s),
        };
        let key = &self.identity.key;
        let registered = self.identity.is_registered();
        let setup_key = if registered {
            String::new()
        } else {
            self.opts.setup_key.clone().unwrap_or_default()
        };
        let login = pb::LoginRequest {
            setup_key,
            meta: Some(system_meta(self.opts.ipv6_overlay)),
            peer_keys: Some(pb::PeerKeys {
                ssh_pub_key: vec![],
                wg_pub_key: key.public().to_base64().into_bytes(),
            }),
            ..Default::default()
        };
        let response = match client.login(key.seal_message(&server, &login)).await {
            Ok(r) => r.into_inner(),
            Err(s) => return login_end(s),
        };
        let login: pb::LoginResponse = match key.open_message(&server, &response) {
            Ok(l) => l,
            Err(e) => return SessionEnd::Retry(format!("Login response: {e}")),
        };
        if !registered {
            if let Err(e) = self.identity.mark_registered(&self.opts.url) {
                return SessionEnd::Fatal(format!("recording the registration: {e:#}"));
            }
            info!(
                address = login
                    .peer_config
                    .as_ref()
                    .map(|c| c.address.as_str())
                    .unwrap_or(""),
                "registered with the management service"
            );
        }
        let mut stream = match client
            .sync(key.seal_message(
                &server,
                &pb::SyncRequest {
                    meta: Some(system_meta(self.opts.ipv6_overlay)),
                },
            ))
            .await
        {
            Ok(s) => s.into_inner(),
            Err(s) => return status_end("Sync", s),
        };
        let _ = self.events.send(Event::Connected(true)).await;
        let own_key = key.public().to_base64();
        loop {
            let message = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return SessionEnd::Retry("the server closed the Sync stream".into()),
                Err(s) => return status_end("Sync stream", s),
            };
            let received = Instant::now();
            self.backoff.reset();
            let opened = key.open_message::<pb::SyncResponse>(&server, &message);
            let event = match &opened {
                Err(e) => Event::Rejected(format!("Sync message: {e}")),
                Ok(pb::SyncResponse {
                    network_map: None, ..
                }) => continue,
                Ok(pb::SyncResponse {
                    network_map: Some(map),
                    ..
                }) => match translate(map, login.peer_config.as_ref(), &own_key) {
                    Ok(t) => Event::Map(Box::new(t), received),
                    Err(e) => Event::Rejected(format!("network map serial {}: {e}", map.serial)),
                },
            };
            if self.events.send(event).await.is_err() {
                return SessionEnd::Fatal("the gateway stopped".into());
            }
            // Freeing the decoded map of a large account takes milliseconds: the runner applies
            // the translated one meanwhile.
            drop(opened);
        }
    }
}

/// Follows the management service until the server refuses this peer or the runner goes away.
pub async fn run(opts: SyncOptions, identity: Identity, events: mpsc::Sender<Event>) {
    let mut backoff = Backoff::default();
    loop {
        let end = Session {
            opts: &opts,
            identity: &identity,
            events: &events,
            backoff: &mut backoff,
        }
        .run()
        .await;
        let _ = events.send(Event::Connected(false)).await;
        match end {
            SessionEnd::Fatal(message) => {
                let _ = events.send(Event::Fatal(message)).await;
                return;
            }
            SessionEnd::Retry(message) => {
                let wait = backoff.next_delay();
                warn!("management: {message}; retrying in {wait:?} (the policy in force stays)");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests;
