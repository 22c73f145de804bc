//! The running service's state: the account in memory, the store behind it, the server key, and
//! the change signal that Sync streams wait on.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Mutex, RwLock},
    time::Duration,
};

use anyhow::Context;
use ipnet::Ipv4Net;
use management_proto::{WgKey, pb};
use tokio::sync::watch;

use crate::{
    activity::{Event, Initiator, Record},
    error::{Error, Result},
    model::{Account, now},
    netmap::MapSettings,
    store::{Store, Touched},
};

#[derive(Clone, Debug)]
pub struct Options {
    /// Holds `management.db` and the server's private key.
    pub data_dir: PathBuf,
    /// REST token; `None` reads (or on first start writes) `<data_dir>/api-token`.
    pub api_token: Option<String>,
    pub network: Ipv4Net,
    pub dns_domain: String,
    /// Ephemeral peers are deleted this long after their last Sync stream closed.
    pub ephemeral_timeout: Duration,
    /// TURN relays handed to peers in `NetbirdConfig.turns`, with time-limited credentials.
    pub turn: Option<TurnOptions>,
    /// STUN servers handed to peers in `NetbirdConfig.stuns` (e.g. `stun:relay.example:3478`).
    pub stuns: Vec<String>,
    /// Where IPv6 overlay addresses come from.
    pub ipv6: Ipv6Overlay,
    /// The Signal server handed to peers (`NetbirdConfig.signal`), e.g. `https://signal.example:443`.
    pub signal: Option<String>,
    /// NetBird relays handed to peers (`NetbirdConfig.relay`) with time-limited tokens.
    pub relay: Option<RelayOptions>,
}

/// NetBird relay servers and the secret their tokens are signed with (the relay's `--auth-secret`).
#[derive(Clone, Debug)]
pub struct RelayOptions {
    /// e.g. `rels://relay.example:443`
    pub urls: Vec<String>,
    pub secret: String,
    /// How long a token lasts (NetBird's default 24 h); peers get a fresh one at ¾ of it.
    pub ttl: Duration,
}

/// The IPv6 overlay (NetBird's): every peer gets an address; peers that announce the
/// capability get IPv6 in their maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipv6Overlay {
    /// The range stored with the account, or on first start a random ULA /64 (as NetBird picks).
    Auto,
    /// This range; peers outside it get new addresses.
    Range(ipnet::Ipv6Net),
    /// No IPv6 overlay: maps carry IPv4 only (peers keep their addresses for a later return).
    Off,
}

/// TURN servers and the shared secret their credentials come from (coturn's
/// `static-auth-secret`, the relay's `static_auth_secret`).
#[derive(Clone, Debug)]
pub struct TurnOptions {
    /// e.g. `turn:relay.example:3478?transport=udp`
    pub uris: Vec<String>,
    pub secret: String,
    /// How long a credential lasts (NetBird's default 12 h); peers get a fresh one at ¾ of it.
    pub ttl: Duration,
}

impl Options {
    pub fn new(data_dir: impl Into<PathBuf>) -> Options {
        Options {
            data_dir: data_dir.into(),
            api_token: None,
            network: "100.64.0.0/10".parse().expect("constant"),
            dns_domain: "netbird.selfhosted".into(),
            ephemeral_timeout: Duration::from_secs(600),
            turn: None,
            stuns: Vec::new(),
            ipv6: Ipv6Overlay::Auto,
            signal: None,
            relay: None,
        }
    }
}

/// Sync streams one peer may hold open at once. A NetBird client holds one; a restart may
/// briefly overlap the old and the new.
pub const MAX_STREAMS_PER_PEER: usize = 4;

pub struct Management {
    account: RwLock<Account>,
    store: Mutex<Store>,
    pub key: WgKey,
    pub api_token: String,
    pub settings: MapSettings,
    pub ephemeral_timeout: Duration,
    turn: Option<TurnOptions>,
    stuns: Vec<String>,
    signal: Option<pb::HostConfig>,
    relay: Option<RelayOptions>,
    /// Carries the serial after every change.
    changes: watch::Sender<u64>,
    /// Open Sync streams per peer id.
    streams: Mutex<HashMap<String, usize>>,
    pub metrics: crate::metrics::Metrics,
}

/// The data directory's files.
pub const DB_FILE: &str = "management.db";
pub const KEY_FILE: &str = "server.key";
pub const TOKEN_FILE: &str = "api-token";

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// Creates `dir` if needed and makes it 0700.
pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("create data directory {}", dir.display()))?;
    set_mode(dir, 0o700)
}

/// Refuses a secret file that others can read or write: whoever could read it may have copied
/// it, so the operator should make a new one rather than have the service quietly carry on.
fn check_private(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(meta) if meta.permissions().mode() & 0o077 != 0 => anyhow::bail!(
            "{} has mode {:o}: others may read the API token; replace it (delete it for a new one) and keep it 0600",
            path.display(),
            meta.permissions().mode() & 0o777
        ),
        _ => Ok(()),
    }
}

/// Reads a secret file, or creates it with `make()` and mode 0600 if it does not exist.
fn secret_file(path: &Path, make: impl FnOnce() -> String) -> anyhow::Result<String> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let value = make();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("create {}", path.display()))?;
            writeln!(f, "{value}")?;
            Ok(value)
        }
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// The Signal server as NetBird's config names it: `https://host:port` → HTTPS, `host:port`.
pub fn signal_host(url: &str) -> anyhow::Result<pb::HostConfig> {
    use pb::host_config::Protocol;
    let (protocol, rest) = match url.split_once("://") {
        Some(("https", rest)) => (Protocol::Https, rest),
        Some(("http", rest)) => (Protocol::Http, rest),
        _ => anyhow::bail!("signal URL {url:?}: give it as https://host:port or http://host:port"),
    };
    if rest.is_empty() || rest.contains('/') {
        anyhow::bail!("signal URL {url:?}: give it as https://host:port or http://host:port");
    }
    Ok(pb::HostConfig {
        uri: rest.to_string(),
        protocol: protocol as i32,
    })
}

/// A NetBird relay token's signature: base64(HMAC-SHA256(SHA-256(secret), payload)).
pub fn relay_token_signature(secret: &str, payload: &str) -> String {
    use base64::Engine;
    use hmac::Mac;
    use sha2::Digest;
    let key = sha2::Sha256::digest(secret.as_bytes());
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(payload.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// A random unique-local /64 (fdXX:XXXX:XXXX:XXXX::/64), as NetBird allocates an account's.
fn random_ula() -> ipnet::Ipv6Net {
    use rand::Rng;
    let mut b: [u8; 16] = [0; 16];
    b[0] = 0xfd;
    rand::rng().fill(&mut b[1..8]);
    ipnet::Ipv6Net::new(std::net::Ipv6Addr::from(b), 64).expect("64 is a valid prefix length")
}

/// The change's records as events: each by its own initiator, or by whoever made the change.
fn stamp(records: Vec<Record>, by: &Initiator) -> Vec<Event> {
    let timestamp_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    records
        .into_iter()
        .map(|r| {
            let (activity, activity_code) = r.activity.describe();
            let (initiator_id, initiator_name, initiator_email) =
                r.initiator.as_ref().unwrap_or(by).identity();
            Event {
                id: 0,
                timestamp_ms,
                activity: activity.into(),
                activity_code: activity_code.into(),
                initiator_id,
                initiator_name,
                initiator_email,
                target_id: r.target_id,
                meta: r.meta,
            }
        })
        .collect()
}

impl Management {
    pub fn open(options: &Options) -> anyhow::Result<Management> {
        // Parsed once: every Login and Sync hands it out as it is.
        let signal = options.signal.as_deref().map(signal_host).transpose()?;
        if options
            .relay
            .as_ref()
            .is_some_and(|r| r.urls.is_empty() || r.secret.is_empty())
        {
            anyhow::bail!("a relay needs at least one URL and a secret");
        }
        private_dir(&options.data_dir)?;
        let db_path = options.data_dir.join(DB_FILE);
        let mut store = Store::open(&db_path)?;
        // The database holds peers' keys and the setup keys' hashes: owner only.
        set_mode(&db_path, 0o600)?;
        let mut account = store.load().context("load account")?;
        let mut repaired = account.repair();
        let network_v6 = match options.ipv6 {
            Ipv6Overlay::Auto => Some(account.network_v6.unwrap_or_else(random_ula)),
            Ipv6Overlay::Range(n) if n.prefix_len() > 120 => anyhow::bail!(
                "the IPv6 overlay range {n} is too small (at most /120; NetBird uses a /64)"
            ),
            Ipv6Overlay::Range(n) => Some(n.trunc()),
            Ipv6Overlay::Off => None,
        };
        // The range is stored with the serial, which set_network_v6 raises when anything moved.
        let serial = account.serial;
        repaired.extend(account.set_network_v6(network_v6));
        if !repaired.is_empty() || account.serial != serial {
            store
                .save(&account, &repaired, &[])
                .context("store the built-in group and hashed setup keys")?;
        }
        let key_text = secret_file(&options.data_dir.join(KEY_FILE), || {
            WgKey::generate().to_base64()
        })?;
        let key = WgKey::from_base64(&key_text).context("server.key")?;
        let api_token = match &options.api_token {
            Some(t) => t.clone(),
            None => {
                let path = options.data_dir.join(TOKEN_FILE);
                check_private(&path)?;
                secret_file(&path, crate::account::new_setup_key_secret)?
            }
        };
        if api_token.len() < 8 {
            anyhow::bail!("the API token must be at least 8 characters");
        }
        let (changes, _) = watch::channel(account.serial);
        Ok(Management {
            account: RwLock::new(account),
            store: Mutex::new(store),
            key,
            api_token,
            settings: MapSettings {
                network: options.network,
                dns_domain: options.dns_domain.clone(),
            },
            ephemeral_timeout: options.ephemeral_timeout,
            turn: options.turn.clone(),
            stuns: options.stuns.clone(),
            signal,
            relay: options.relay.clone(),
            changes,
            streams: Mutex::new(HashMap::new()),
            metrics: Default::default(),
        })
    }

    /// What peers learn of the deployment at Login and on their Sync stream, as NetBird's
    /// management tells it: STUN servers; TURN servers with a time-limited credential each
    /// (username = expiry unix time, password = base64(HMAC-SHA1(secret, username))); the Signal
    /// server; relays with a time-limited token (payload = expiry unix time, signature =
    /// base64(HMAC-SHA256(SHA-256(secret), payload))). `None` when there is nothing to tell.
    pub fn netbird_config(&self, now_unix: u64) -> Option<pb::NetbirdConfig> {
        if self.turn.is_none()
            && self.stuns.is_empty()
            && self.signal.is_none()
            && self.relay.is_none()
        {
            return None;
        }
        let host = |uri: &str| pb::HostConfig {
            uri: uri.to_string(),
            protocol: pb::host_config::Protocol::Udp as i32,
        };
        let turns = self
            .turn
            .iter()
            .flat_map(|t| {
                let user = (now_unix + t.ttl.as_secs()).to_string();
                let password = gateway_relay::auth::time_limited_password(&t.secret, &user);
                t.uris.iter().map(move |u| pb::ProtectedHostConfig {
                    host_config: Some(host(u)),
                    user: user.clone(),
                    password: password.clone(),
                })
            })
            .collect();
        let signal = self.signal.clone();
        let relay = self.relay.as_ref().map(|r| {
            let payload = (now_unix + r.ttl.as_secs()).to_string();
            pb::RelayConfig {
                urls: r.urls.clone(),
                token_signature: relay_token_signature(&r.secret, &payload),
                token_payload: payload,
            }
        });
        Some(pb::NetbirdConfig {
            stuns: self.stuns.iter().map(|u| host(u)).collect(),
            turns,
            signal,
            relay,
            ..Default::default()
        })
    }

    /// When peers need fresh TURN credentials or relay tokens: at ¾ of the shorter lifetime
    /// (NetBird's schedule).
    pub fn credential_refresh(&self) -> Option<Duration> {
        let turn = self.turn.as_ref().map(|t| t.ttl);
        let relay = self.relay.as_ref().map(|r| r.ttl);
        turn.into_iter().chain(relay).min().map(|ttl| ttl * 3 / 4)
    }

    pub fn read<T>(&self, f: impl FnOnce(&Account) -> T) -> T {
        f(&self.account.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Applies one change made by `by`: `f` validates and modifies the account (and must leave it
    /// untouched when it fails); the touched objects and the change's events are then stored in
    /// one transaction, and Sync streams are told.
    pub fn change<T>(
        &self,
        by: Initiator,
        f: impl FnOnce(&mut Account) -> Result<(T, Touched)>,
    ) -> Result<T> {
        let mut account = self.account.write().unwrap_or_else(|e| e.into_inner());
        account.journal.clear();
        let outcome = f(&mut account);
        let records = std::mem::take(&mut account.journal);
        let (value, touched) = outcome?;
        if touched.is_empty() && records.is_empty() {
            return Ok(value);
        }
        let events = stamp(records, &by);
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = store.save(&account, &touched, &events) {
            // Keep memory equal to disk: go back to what was last stored.
            if let Ok(stored) = store.load() {
                *account = stored;
            }
            return Err(Error::Internal(e.context("store the change")));
        }
        let serial = account.serial;
        drop(account);
        self.changes
            .send_if_modified(|s| std::mem::replace(s, serial) != serial);
        Ok(value)
    }

    /// The newest `limit` events of the activity log, newest first.
    pub fn events(&self, limit: usize) -> Result<Vec<Event>> {
        self.store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .events(limit)
            .map_err(|e| Error::Internal(e.context("read the activity log")))
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn is_connected(&self, peer_id: &str) -> bool {
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer_id)
            .is_some_and(|n| *n > 0)
    }

    pub fn open_streams(&self) -> usize {
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .sum()
    }

    /// Counts a new Sync stream of the peer; `false` (and not counted) past the limit.
    pub fn stream_opened(&self, peer_id: &str) -> bool {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let n = streams.entry(peer_id.to_string()).or_default();
        if *n >= MAX_STREAMS_PER_PEER {
            return false;
        }
        *n += 1;
        true
    }

    /// Marks a Sync stream closed; the peer's last_seen becomes now when its last stream closes.
    pub fn stream_closed(&self, peer_id: &str) {
        let last = {
            let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
            let n = streams.entry(peer_id.to_string()).or_default();
            *n = n.saturating_sub(1);
            *n == 0
        };
        if last {
            let _ = self.change(Initiator::System, |a| {
                Ok(((), a.touch_peer(peer_id, now())))
            });
        }
    }

    /// Applies what time ended: expired peer logins and ACLs (see `Account::expire`).
    pub fn expire(&self) {
        match self.change(Initiator::System, |a| Ok(a.expire(now()))) {
            Ok(what) => what.iter().for_each(|w| tracing::info!("{w}")),
            Err(e) => tracing::warn!("could not apply expiries: {e}"),
        }
    }

    /// Deletes ephemeral peers offline for longer than the timeout; returns how many.
    pub fn remove_expired_ephemeral(&self) -> usize {
        let after = self.ephemeral_timeout.as_secs();
        let expired =
            self.read(|a| a.expired_ephemeral_peers(now(), after, &|id| self.is_connected(id)));
        let mut removed = 0;
        for id in expired {
            match self.change(Initiator::System, |a| a.delete_peer(&id).map(|t| ((), t))) {
                Ok(()) => {
                    tracing::info!(peer = %id, "deleted ephemeral peer after {after} s offline");
                    removed += 1;
                }
                Err(e) => tracing::warn!(peer = %id, "could not delete ephemeral peer: {e}"),
            }
        }
        removed
    }
}
