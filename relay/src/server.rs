//! The relay itself: one UDP socket per listening address for clients, one per allocation
//! toward peers, the RFC 8656 state (allocations, permissions, channels) and its timers.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use ipnet::IpNet;
use stun_codec::{
    MessageClass, TransactionId,
    rfc5389::{
        attributes::{MessageIntegrity, Nonce, Realm, Software, Username, XorMappedAddress},
        methods::BINDING,
    },
    rfc5766::{
        attributes::{
            Data, EvenPort, Lifetime, RequestedTransport, ReservationToken, XorPeerAddress,
            XorRelayAddress,
        },
        methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, DATA, REFRESH, SEND},
    },
    rfc8656::attributes::{AdditionalAddressFamily, AddressFamily, RequestedAddressFamily},
};
use tokio::net::UdpSocket;
use tracing::{info, warn};

use crate::{
    auth::{AuthError, Credentials, NonceCheck, Nonces},
    config::RelayConfig,
    fast_path::{Binding, FastPath, Totals},
    message::{self, AddressErrorCode, ChannelNumber, Key, Msg},
};

pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
pub const MAX_LIFETIME: Duration = Duration::from_secs(3600);
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// A channel number or peer stays reserved this long after its binding expired.
pub const CHANNEL_COOLDOWN: Duration = Duration::from_secs(300);
/// A port reserved by EVEN-PORT's R bit waits this long for its RESERVATION-TOKEN (RFC 8656
/// §7.2 suggests about 30 s).
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);
/// Reserved ports held at once; past it an Allocate asking for a reservation gets 508.
const MAX_RESERVATIONS: usize = 1024;
const SOFTWARE: &str = concat!("gateway-relay ", env!("CARGO_PKG_VERSION"));

/// An allocation is keyed by its 5-tuple: the listening address it came in on and the client.
type AllocKey = (SocketAddr, SocketAddr);

struct Channel {
    peer: SocketAddr,
    expires: Instant,
    /// In the kernel's hands while bound (IPv4, concrete addresses, a fast path configured).
    offloaded: Option<Binding>,
    /// The binding's counter slot as it was when bound: what the kernel relayed for this
    /// channel is the slot's count since.
    baseline: Totals,
}

/// One relayed transport address of an allocation: an allocation has one per address family it
/// was given (RFC 8656: IPv4, IPv6, or both).
struct Relayed {
    /// The address peers send to (external-ip of its family when configured).
    public: SocketAddr,
    sock: Arc<UdpSocket>,
    peer_task: tokio::task::JoinHandle<()>,
}

fn family_of(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::V4
    } else {
        AddressFamily::V6
    }
}

/// The port above an even relayed port, held for a later Allocate (RTP's RTCP partner) that
/// names it by RESERVATION-TOKEN.
struct Reservation {
    sock: UdpSocket,
    public: SocketAddr,
    expires: Instant,
}

struct Allocation {
    username: String,
    /// The Allocate that made it: a retransmission of it gets the same answer again.
    transaction: TransactionId,
    relayed: Vec<Relayed>,
    listener: Arc<UdpSocket>,
    expires: Instant,
    permissions: HashMap<IpAddr, Instant>,
    channels: HashMap<u16, Channel>,
    /// Relayed by userspace for this allocation.
    userspace: Totals,
    /// Relayed by the kernel for channels it no longer holds.
    kernel_done: Totals,
}

impl Allocation {
    /// The relayed address that talks to peers of `peer`'s family, if the allocation has one.
    fn relay_toward(&self, peer: IpAddr) -> Option<&Relayed> {
        self.relayed
            .iter()
            .find(|r| family_of(r.public.ip()) == family_of(peer))
    }

    /// Its relayed addresses, for logs and status.
    fn addresses(&self) -> String {
        let all: Vec<String> = self.relayed.iter().map(|r| r.public.to_string()).collect();
        all.join(", ")
    }

    /// Stops receiving from peers (the sockets close with the allocation).
    fn stop(&self) {
        for r in &self.relayed {
            r.peer_task.abort();
        }
    }

    fn permitted(&self, peer: IpAddr, now: Instant) -> bool {
        self.permissions.get(&peer).is_some_and(|e| *e > now)
    }

    fn channel_of(&self, peer: SocketAddr, now: Instant) -> Option<u16> {
        self.channels
            .iter()
            .find(|(_, c)| c.peer == peer && c.expires > now)
            .map(|(n, _)| *n)
    }
}

/// What the relay counts (for status and metrics).
#[derive(Default)]
pub struct Counters {
    pub to_peer_packets: AtomicU64,
    pub to_peer_bytes: AtomicU64,
    pub to_client_packets: AtomicU64,
    pub to_client_bytes: AtomicU64,
    pub auth_failures: AtomicU64,
    pub refused_peers: AtomicU64,
    pub dropped_no_permission: AtomicU64,
}

pub struct Relay {
    cfg: RelayConfig,
    creds: Credentials,
    nonces: Nonces,
    realm: Realm,
    allocations: Mutex<HashMap<AllocKey, Allocation>>,
    /// Ports reserved by EVEN-PORT, by token.
    reservations: Mutex<HashMap<u64, Reservation>>,
    pub counters: Counters,
    fast: Option<Arc<dyn FastPath>>,
    /// Counter slots of the fast path not in use.
    free_slots: Mutex<Vec<u32>>,
}

/// A snapshot for `gateway relay status` and the metrics.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Status {
    pub allocations: usize,
    pub permissions: usize,
    pub channels: usize,
    /// Relayed by the userspace path (the XDP path is not built yet).
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
    pub auth_failures: u64,
    pub refused_peers: u64,
    pub dropped_no_permission: u64,
    /// Relayed by the kernel fast path (bound channels), when there is one.
    #[serde(default)]
    pub xdp: Option<crate::fast_path::Totals>,
    /// Channels in the kernel's hands now.
    #[serde(default)]
    pub offloaded_channels: usize,
    /// Each allocation, with what was relayed for it (both paths).
    #[serde(default)]
    pub per_allocation: Vec<AllocationStatus>,
}

/// One allocation in `gateway relay status`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct AllocationStatus {
    pub client: String,
    pub relayed: String,
    pub username: String,
    pub expires_in_s: u64,
    pub permissions: usize,
    pub channels: usize,
    pub offloaded_channels: usize,
    pub userspace: Totals,
    /// By the kernel fast path (channels bound now and earlier).
    pub xdp: Totals,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Relay {
    pub fn new(cfg: RelayConfig) -> anyhow::Result<Arc<Relay>> {
        Self::with_fast_path(cfg, None)
    }

    /// A relay that hands bound channels to `fast` (with `slots` counter slots).
    pub fn with_fast_path(
        cfg: RelayConfig,
        fast: Option<(Arc<dyn FastPath>, u32)>,
    ) -> anyhow::Result<Arc<Relay>> {
        let realm = Realm::new(cfg.realm.clone()).map_err(|e| anyhow::anyhow!("realm: {e}"))?;
        let (fast, slots) = match fast {
            Some((f, n)) => (Some(f), (0..n).rev().collect()),
            None => (None, Vec::new()),
        };
        Ok(Arc::new(Relay {
            creds: cfg.credentials(),
            cfg,
            nonces: Nonces::new(),
            realm,
            allocations: Mutex::new(HashMap::new()),
            reservations: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            fast,
            free_slots: Mutex::new(slots),
        }))
    }

    /// Hands a channel to the fast path where it can take it (concrete addresses, all four of
    /// one family); `None` leaves it to userspace.
    fn offload(
        &self,
        key: AllocKey,
        relay_local: SocketAddr,
        channel: u16,
        peer: SocketAddr,
    ) -> Option<Binding> {
        let fast = self.fast.as_ref()?;
        // The addresses first: a channel the kernel cannot take (one that crosses families, or
        // an unspecified listening address) must not use up a slot.
        let (client, listen, relay) = (key.1, key.0, relay_local);
        let all = [client, listen, peer, relay];
        if all.iter().any(|a| a.ip().is_unspecified())
            || all.iter().any(|a| a.is_ipv4() != client.is_ipv4())
        {
            return None;
        }
        let slot = self
            .free_slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()?;
        let b = Binding {
            client,
            listen,
            channel,
            peer,
            relay,
            slot,
        };
        match fast.bind(&b) {
            Ok(()) => Some(b),
            Err(e) => {
                warn!(
                    "fast path refused channel {channel:#x} of {}: {e:#}; it stays in userspace",
                    key.1
                );
                self.free_slots
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(slot);
                None
            }
        }
    }

    fn take_back(&self, b: Binding) {
        if let Some(fast) = &self.fast {
            fast.unbind(&b);
            self.free_slots
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(b.slot);
        }
    }

    /// What the kernel relayed for an allocation: its finished bindings and those it holds now.
    fn kernel_totals(&self, a: &Allocation) -> Totals {
        let Some(fast) = &self.fast else {
            return a.kernel_done;
        };
        a.channels
            .values()
            .filter_map(|c| {
                c.offloaded
                    .map(|b| fast.slot_totals(b.slot).since(c.baseline))
            })
            .fold(a.kernel_done, Totals::plus)
    }

    /// Logs what an allocation relayed over its life, as it ends (coturn logs its sessions'
    /// usage the same way). Call while its bindings are still in the kernel.
    fn log_end(&self, key: &AllocKey, a: &Allocation, reason: &str) {
        let (u, x) = (a.userspace, self.kernel_totals(a));
        let all = u.plus(x);
        info!(
            client = %key.1,
            relayed = %a.addresses(),
            user = %a.username,
            "allocation ended ({reason}): to peer {} packets, {} bytes (in XDP {}, {}); to client {} packets, {} bytes (in XDP {}, {})",
            all.to_peer_packets,
            all.to_peer_bytes,
            x.to_peer_packets,
            x.to_peer_bytes,
            all.to_client_packets,
            all.to_client_bytes,
            x.to_client_packets,
            x.to_client_bytes
        );
    }

    /// Counts a datagram userspace relayed for the allocation at `key` (the global counters and
    /// the allocation's own).
    fn relayed(&self, key: &AllocKey, to_peer: bool, bytes: usize) {
        let (packets, total) = if to_peer {
            (&self.counters.to_peer_packets, &self.counters.to_peer_bytes)
        } else {
            (
                &self.counters.to_client_packets,
                &self.counters.to_client_bytes,
            )
        };
        packets.fetch_add(1, Ordering::Relaxed);
        total.fetch_add(bytes as u64, Ordering::Relaxed);
        if let Some(a) = self.allocations().get_mut(key) {
            let t = &mut a.userspace;
            if to_peer {
                t.to_peer_packets += 1;
                t.to_peer_bytes += bytes as u64;
            } else {
                t.to_client_packets += 1;
                t.to_client_bytes += bytes as u64;
            }
        }
    }

    fn allocations(&self) -> std::sync::MutexGuard<'_, HashMap<AllocKey, Allocation>> {
        self.allocations.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn status(&self) -> Status {
        self.status_at(Instant::now())
    }

    /// The status without `per_allocation`, for metric scrapes: no kernel counter read per
    /// bound channel, and the allocation table held only for the counts.
    pub fn summary(&self) -> Status {
        self.status_with(Instant::now(), false)
    }

    /// The status as it will be at `now` (permissions and channels past their time are not
    /// counted even before the sweep removes them).
    pub fn status_at(&self, now: Instant) -> Status {
        self.status_with(now, true)
    }

    fn status_with(&self, now: Instant, per_allocation: bool) -> Status {
        let a = self.allocations();
        let c = &self.counters;
        let get = |v: &AtomicU64| v.load(Ordering::Relaxed);
        Status {
            allocations: a.len(),
            permissions: a
                .values()
                .map(|x| x.permissions.values().filter(|e| **e > now).count())
                .sum(),
            channels: a
                .values()
                .map(|x| x.channels.values().filter(|c| c.expires > now).count())
                .sum(),
            to_peer_packets: get(&c.to_peer_packets),
            to_peer_bytes: get(&c.to_peer_bytes),
            to_client_packets: get(&c.to_client_packets),
            to_client_bytes: get(&c.to_client_bytes),
            auth_failures: get(&c.auth_failures),
            refused_peers: get(&c.refused_peers),
            dropped_no_permission: get(&c.dropped_no_permission),
            xdp: self.fast.as_ref().map(|f| f.totals()),
            per_allocation: a
                .iter()
                .filter(|_| per_allocation)
                .map(|(key, x)| AllocationStatus {
                    client: key.1.to_string(),
                    relayed: x.addresses(),
                    username: x.username.clone(),
                    expires_in_s: x.expires.saturating_duration_since(now).as_secs(),
                    permissions: x.permissions.values().filter(|e| **e > now).count(),
                    channels: x.channels.values().filter(|c| c.expires > now).count(),
                    offloaded_channels: x
                        .channels
                        .values()
                        .filter(|c| c.offloaded.is_some())
                        .count(),
                    userspace: x.userspace,
                    xdp: self.kernel_totals(x),
                })
                .collect(),
            offloaded_channels: a
                .values()
                .map(|x| {
                    x.channels
                        .values()
                        .filter(|c| c.offloaded.is_some())
                        .count()
                })
                .sum(),
        }
    }

    /// Serves until the task is dropped: one loop per listening address and the timer sweep.
    pub async fn serve(self: Arc<Relay>) -> anyhow::Result<()> {
        let mut tasks = tokio::task::JoinSet::new();
        for addr in self.cfg.listen.clone() {
            let sock = Arc::new(
                UdpSocket::bind(addr)
                    .await
                    .with_context(|| format!("listening on {addr}"))?,
            );
            info!(%addr, realm = %self.cfg.realm, "TURN relay listening (UDP)");
            let relay = self.clone();
            tasks.spawn(async move { relay.listen(sock).await });
        }
        let relay = self.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                relay.sweep(Instant::now());
            }
        });
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        Ok(())
    }

    async fn listen(self: Arc<Relay>, sock: Arc<UdpSocket>) -> anyhow::Result<()> {
        let local = sock.local_addr()?;
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, from) = match sock.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    warn!("receive on {local}: {e}");
                    continue;
                }
            };
            let datagram = &buf[..n];
            if let Some((channel, data)) = message::parse_channel_data(datagram) {
                self.on_client_channel_data((local, from), channel, data)
                    .await;
                continue;
            }
            let Some(request) = message::decode(datagram) else {
                continue;
            };
            if let Some(reply) = self.handle(&sock, (local, from), request).await {
                let _ = sock.send_to(&reply, from).await;
            }
        }
    }

    /// ChannelData from a client: to the channel's peer, from the allocation's address.
    async fn on_client_channel_data(&self, key: AllocKey, channel: u16, data: &[u8]) {
        let now = Instant::now();
        let target = {
            let allocs = self.allocations();
            allocs.get(&key).and_then(|a| {
                let c = a.channels.get(&channel).filter(|c| c.expires > now)?;
                Some((a.relay_toward(c.peer.ip())?.sock.clone(), c.peer))
            })
        };
        if let Some((relay, peer)) = target
            && relay.send_to(data, peer).await.is_ok()
        {
            self.relayed(&key, true, data.len());
        }
    }

    /// A peer's datagram to an allocation: to the client as ChannelData when the peer has a
    /// channel, else as a Data indication; dropped without a permission.
    async fn on_peer_datagram(&self, key: AllocKey, peer: SocketAddr, data: &[u8]) {
        let now = Instant::now();
        let out = {
            let allocs = self.allocations();
            let Some(a) = allocs.get(&key) else { return };
            if !a.permitted(peer.ip(), now) {
                self.counters
                    .dropped_no_permission
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
            let bytes = match a.channel_of(peer, now) {
                Some(ch) => message::channel_data(ch, data),
                None => {
                    let mut m = message::response(
                        MessageClass::Indication,
                        DATA,
                        TransactionId::new(rand::random()),
                    );
                    m.add_attribute(XorPeerAddress::new(peer));
                    match Data::new(data.to_vec()) {
                        Ok(d) => m.add_attribute(d),
                        Err(_) => return,
                    }
                    message::encode(m, None)
                }
            };
            (a.listener.clone(), bytes)
        };
        if out.0.send_to(&out.1, key.1).await.is_ok() {
            self.relayed(&key, false, data.len());
        }
    }

    /// Whether the relay may send to `peer` (RFC 8656 §21.2: no loopback, unspecified,
    /// multicast or the relay's own addresses, nothing denied unless explicitly allowed).
    fn peer_allowed(&self, peer: IpAddr) -> bool {
        if self
            .cfg
            .allowed_peer_ip
            .iter()
            .any(|n: &IpNet| n.contains(&peer))
        {
            return true;
        }
        let own = self
            .cfg
            .listen
            .iter()
            .map(|l| l.ip())
            .chain(self.cfg.relay_ip.iter().copied())
            .chain(self.cfg.external_ip.iter().copied())
            .any(|ip| ip == peer);
        // An IPv4-mapped IPv6 address is an IPv4 host in disguise: it would slip past the IPv4
        // ranges above.
        let special = peer.is_loopback()
            || peer.is_unspecified()
            || peer.is_multicast()
            || matches!(peer, IpAddr::V4(v4) if v4.is_broadcast())
            || matches!(peer, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some());
        !(own || special || self.cfg.denied_peer_ip.iter().any(|n| n.contains(&peer)))
    }

    /// Checks a request's long-term credentials; the error response when they fail.
    fn authenticate(&self, req: &Msg, client: SocketAddr) -> Result<(Username, String), Msg> {
        let now = unix_now();
        let challenge = |code: u16, reason: &str| {
            let mut m = message::error(req.method(), req.transaction_id(), code, reason);
            m.add_attribute(self.realm.clone());
            if let Ok(n) = Nonce::new(self.nonces.issue(client, now)) {
                m.add_attribute(n);
            }
            m
        };
        let (Some(user), Some(_), Some(nonce), Some(mi)) = (
            req.get_attribute::<Username>(),
            req.get_attribute::<Realm>(),
            req.get_attribute::<Nonce>(),
            req.get_attribute::<MessageIntegrity>(),
        ) else {
            return Err(challenge(401, "Unauthorized"));
        };
        match self.nonces.check(nonce.value(), client, now) {
            NonceCheck::Valid => {}
            NonceCheck::Stale => return Err(challenge(438, "Stale Nonce")),
            NonceCheck::Invalid => return Err(challenge(401, "Unauthorized")),
        }
        let password = match self.creds.password(user.name(), now) {
            Ok(p) => p,
            Err(e) => {
                self.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
                let why = match e {
                    AuthError::Expired => "credential expired",
                    _ => "unknown user",
                };
                tracing::debug!(%client, user = user.name(), why, "authentication refused");
                return Err(challenge(401, "Unauthorized"));
            }
        };
        if mi
            .check_long_term_credential(user, &self.realm, &password)
            .is_err()
        {
            self.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
            return Err(challenge(401, "Unauthorized"));
        }
        Ok((user.clone(), password))
    }

    /// One STUN message from a client; the encoded answer, if it gets one.
    async fn handle(
        self: &Arc<Self>,
        listener: &Arc<UdpSocket>,
        key: AllocKey,
        req: Msg,
    ) -> Option<Vec<u8>> {
        let client = key.1;
        match (req.class(), req.method()) {
            (MessageClass::Request, BINDING) => {
                let mut m =
                    message::response(MessageClass::SuccessResponse, BINDING, req.transaction_id());
                m.add_attribute(XorMappedAddress::new(client));
                Some(message::encode(m, None))
            }
            (MessageClass::Indication, SEND) => {
                self.send_indication(key, &req).await;
                None
            }
            (MessageClass::Request, method)
                if [ALLOCATE, REFRESH, CREATE_PERMISSION, CHANNEL_BIND].contains(&method) =>
            {
                let (user, password) = match self.authenticate(&req, client) {
                    Ok(x) => x,
                    Err(e) => return Some(message::encode(e, None)),
                };
                let answer = match method {
                    ALLOCATE => self.allocate(listener, key, &req, user.name()),
                    REFRESH => self.refresh(key, &req, user.name()),
                    CREATE_PERMISSION => self.create_permission(key, &req, user.name()),
                    _ => self.channel_bind(key, &req, user.name()),
                };
                let mut answer = answer.unwrap_or_else(|(code, reason)| {
                    message::error(method, req.transaction_id(), code, reason)
                });
                if let Ok(s) = Software::new(SOFTWARE.to_string()) {
                    answer.add_attribute(s);
                }
                Some(message::encode(
                    answer,
                    Some(Key {
                        username: &user,
                        realm: &self.realm,
                        password: &password,
                    }),
                ))
            }
            // Responses, unknown methods: nothing to answer (RFC 8489 §6.3).
            _ => None,
        }
    }

    fn allocate(
        self: &Arc<Self>,
        listener: &Arc<UdpSocket>,
        key: AllocKey,
        req: &Msg,
        user: &str,
    ) -> Result<Msg, (u16, &'static str)> {
        if let Some(a) = self.allocations().get(&key) {
            // A retransmission of the Allocate that made it gets the same answer (RFC 8656
            // §7.2); any other Allocate on this 5-tuple is a mismatch.
            if a.username != user || a.transaction != req.transaction_id() {
                return Err((437, "Allocation Mismatch"));
            }
            let relayed: Vec<SocketAddr> = a.relayed.iter().map(|r| r.public).collect();
            let left = a.expires.saturating_duration_since(Instant::now());
            return Ok(allocated(req, key.1, &relayed, None, None, left));
        }
        match req.get_attribute::<RequestedTransport>() {
            Some(t) if t.protocol() == 17 => {}
            Some(_) => return Err((442, "Unsupported Transport Protocol")),
            None => return Err((400, "Bad Request")),
        }
        let requested = req
            .get_attribute::<RequestedAddressFamily>()
            .map(|f| f.address_family());
        let additional = req
            .get_attribute::<AdditionalAddressFamily>()
            .map(|f| f.address_family());
        let even = req.get_attribute::<EvenPort>().map(|e| e.is_requested());
        let token = req.get_attribute::<ReservationToken>().map(|t| t.token());
        // A reserved port comes with its family and parity: asking for either as well is a
        // bad request (RFC 8656 §7.2).
        if token.is_some() && (even.is_some() || requested.is_some() || additional.is_some()) {
            return Err((400, "Bad Request"));
        }
        // RFC 8656 §7.2: IPv4 unless another family is requested; ADDITIONAL-ADDRESS-FAMILY
        // (IPv6 only) asks for both.
        let (first, second) = match (requested, additional) {
            (Some(_), Some(_)) | (None, Some(AddressFamily::V4)) => {
                return Err((400, "Bad Request"));
            }
            (None, Some(AddressFamily::V6)) => (AddressFamily::V4, Some(AddressFamily::V6)),
            (requested, None) => (requested.unwrap_or(AddressFamily::V4), None),
        };
        {
            let allocs = self.allocations();
            if self.cfg.total_quota > 0 && allocs.len() as u32 >= self.cfg.total_quota {
                return Err((486, "Allocation Quota Reached"));
            }
            if self.cfg.user_quota > 0
                && allocs.values().filter(|a| a.username == user).count() as u32
                    >= self.cfg.user_quota
            {
                return Err((486, "Allocation Quota Reached"));
            }
        }
        let ports = match even {
            None => Ports::Any,
            Some(false) => Ports::Even,
            Some(true) => Ports::EvenPair,
        };
        let (first, reserved) = match token {
            Some(t) => (self.take_reservation(key, t)?, None),
            None => self.relay_address(key, first, ports)?,
        };
        let mut relayed = vec![first];
        // The second family is best effort: the allocation stands with the first, and the
        // answer says why the second is missing (ADDRESS-ERROR-CODE).
        let mut second_error = None;
        if let Some(family) = second {
            match self.relay_address(key, family, Ports::Any) {
                Ok((r, _)) => relayed.push(r),
                Err((code, reason)) => {
                    second_error = Some(AddressErrorCode {
                        family,
                        code,
                        reason: reason.into(),
                    })
                }
            }
        }
        let lifetime = lifetime(req);
        let addresses: Vec<SocketAddr> = relayed.iter().map(|r| r.public).collect();
        let allocation = Allocation {
            username: user.to_string(),
            transaction: req.transaction_id(),
            relayed,
            listener: listener.clone(),
            expires: Instant::now() + lifetime,
            permissions: HashMap::new(),
            channels: HashMap::new(),
            userspace: Totals::default(),
            kernel_done: Totals::default(),
        };
        info!(client = %key.1, relayed = %allocation.addresses(), user, lifetime = lifetime.as_secs(), "allocation");
        self.allocations().insert(key, allocation);
        Ok(allocated(
            req,
            key.1,
            &addresses,
            second_error,
            reserved,
            lifetime,
        ))
    }

    /// The relayed address held under `token`, for the allocation at `key`; 508 when there is
    /// none (never issued, taken, or past its time).
    fn take_reservation(
        self: &Arc<Self>,
        key: AllocKey,
        token: u64,
    ) -> Result<Relayed, (u16, &'static str)> {
        let r = self
            .reservations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&token)
            .filter(|r| r.expires > Instant::now())
            .ok_or((508, "Insufficient Capacity"))?;
        Ok(self.start_relaying(key, r.sock, r.public))
    }

    /// Starts relaying for the allocation at `key` on `sock`, announced as `public`.
    fn start_relaying(
        self: &Arc<Self>,
        key: AllocKey,
        sock: UdpSocket,
        public: SocketAddr,
    ) -> Relayed {
        let sock = Arc::new(sock);
        let peer_task = tokio::spawn(peer_loop(self.clone(), key, sock.clone()));
        Relayed {
            public,
            sock,
            peer_task,
        }
    }

    /// A relayed address of `family` for the allocation at `key`, its socket bound and its
    /// peers listened to, with the token of the port reserved above it when `ports` asks for
    /// one: 440 when the relay has no address of that family, 508 when the port range is full.
    fn relay_address(
        self: &Arc<Self>,
        key: AllocKey,
        family: AddressFamily,
        ports: Ports,
    ) -> Result<(Relayed, Option<u64>), (u16, &'static str)> {
        let fits = |ip: &IpAddr| family_of(*ip) == family;
        // coturn's default without relay-ip: the listening addresses (the one the client came
        // in on first).
        let relay_ip = if self.cfg.relay_ip.is_empty() {
            std::iter::once(key.0.ip())
                .chain(self.cfg.listen.iter().map(|l| l.ip()))
                .filter(fits)
                .min_by_key(|ip| ip.is_unspecified())
        } else {
            self.cfg.relay_ip.iter().copied().find(fits)
        }
        .ok_or((440, "Address Family not Supported"))?;
        let public_ip = self
            .cfg
            .external_ip
            .iter()
            .copied()
            .find(fits)
            .unwrap_or(relay_ip);
        let reservations = || self.reservations.lock().unwrap_or_else(|p| p.into_inner());
        // (Checked before the ports are bound, which happens without the lock.)
        if ports == Ports::EvenPair && reservations().len() >= MAX_RESERVATIONS {
            return Err((508, "Insufficient Capacity"));
        }
        let (sock, above) = bind_in_range(relay_ip, self.cfg.min_port, self.cfg.max_port, ports)
            .ok_or((508, "Insufficient Capacity"))?;
        let port = sock.local_addr().map_err(|_| (500, "Server Error"))?.port();
        let token = above.map(|sock| {
            let token = rand::random::<u64>();
            reservations().insert(
                token,
                Reservation {
                    sock,
                    public: SocketAddr::new(public_ip, port + 1),
                    expires: Instant::now() + RESERVATION_LIFETIME,
                },
            );
            token
        });
        Ok((
            self.start_relaying(key, sock, SocketAddr::new(public_ip, port)),
            token,
        ))
    }

    fn refresh(&self, key: AllocKey, req: &Msg, user: &str) -> Result<Msg, (u16, &'static str)> {
        let mut allocs = self.allocations();
        let Some(a) = allocs.get_mut(&key).filter(|a| a.username == user) else {
            return Err((437, "Allocation Mismatch"));
        };
        // RFC 8656 §7.3: a family the allocation does not have is a mismatch.
        if let Some(f) = req.get_attribute::<RequestedAddressFamily>()
            && !a
                .relayed
                .iter()
                .any(|r| family_of(r.public.ip()) == f.address_family())
        {
            return Err((443, "Peer Address Family Mismatch"));
        }
        let requested = req.get_attribute::<Lifetime>().map(|l| l.lifetime());
        let lifetime = if requested == Some(Duration::ZERO) {
            Duration::ZERO
        } else {
            lifetime(req)
        };
        if lifetime.is_zero() {
            if let Some(mut a) = allocs.remove(&key) {
                a.stop();
                drop(allocs);
                self.log_end(&key, &a, "released");
                for b in a
                    .channels
                    .values_mut()
                    .filter_map(|c| c.offloaded.take())
                    .collect::<Vec<_>>()
                {
                    self.take_back(b);
                }
                let mut m =
                    message::response(MessageClass::SuccessResponse, REFRESH, req.transaction_id());
                if let Ok(l) = Lifetime::new(lifetime) {
                    m.add_attribute(l);
                }
                return Ok(m);
            }
        } else {
            a.expires = Instant::now() + lifetime;
        }
        let mut m = message::response(MessageClass::SuccessResponse, REFRESH, req.transaction_id());
        if let Ok(l) = Lifetime::new(lifetime) {
            m.add_attribute(l);
        }
        Ok(m)
    }

    fn create_permission(
        &self,
        key: AllocKey,
        req: &Msg,
        user: &str,
    ) -> Result<Msg, (u16, &'static str)> {
        let peers: Vec<SocketAddr> = req
            .attributes()
            .filter_map(|a| match a {
                message::Attribute::XorPeerAddress(p) => Some(p.address()),
                _ => None,
            })
            .collect();
        if peers.is_empty() {
            return Err((400, "Bad Request"));
        }
        if let Some(p) = peers.iter().find(|p| !self.peer_allowed(p.ip())) {
            self.counters.refused_peers.fetch_add(1, Ordering::Relaxed);
            info!(client = %key.1, peer = %p.ip(), "permission refused: the relay does not send there");
            return Err((403, "Forbidden"));
        }
        let mut allocs = self.allocations();
        let Some(a) = allocs.get_mut(&key).filter(|a| a.username == user) else {
            return Err((437, "Allocation Mismatch"));
        };
        if peers.iter().any(|p| a.relay_toward(p.ip()).is_none()) {
            return Err((443, "Peer Address Family Mismatch"));
        }
        let until = Instant::now() + PERMISSION_LIFETIME;
        for p in peers {
            a.permissions.insert(p.ip(), until);
        }
        Ok(message::response(
            MessageClass::SuccessResponse,
            CREATE_PERMISSION,
            req.transaction_id(),
        ))
    }

    fn channel_bind(
        &self,
        key: AllocKey,
        req: &Msg,
        user: &str,
    ) -> Result<Msg, (u16, &'static str)> {
        let (Some(number), Some(peer)) = (
            req.get_attribute::<ChannelNumber>(),
            req.get_attribute::<XorPeerAddress>(),
        ) else {
            return Err((400, "Bad Request"));
        };
        let (number, peer) = (number.value(), peer.address());
        if !(0x4000..=0x7fff).contains(&number) {
            return Err((400, "Bad Request"));
        }
        if !self.peer_allowed(peer.ip()) {
            self.counters.refused_peers.fetch_add(1, Ordering::Relaxed);
            info!(client = %key.1, peer = %peer.ip(), "channel refused: the relay does not send there");
            return Err((403, "Forbidden"));
        }
        let now = Instant::now();
        let mut allocs = self.allocations();
        let Some(a) = allocs.get_mut(&key).filter(|a| a.username == user) else {
            return Err((437, "Allocation Mismatch"));
        };
        let Some(relay_local) = a.relay_toward(peer.ip()).map(|r| r.sock.local_addr().ok()) else {
            return Err((443, "Peer Address Family Mismatch"));
        };
        // A channel (and a peer) stays with its partner while bound and for a while after.
        let reserved = |c: &Channel| c.expires + CHANNEL_COOLDOWN > now;
        if a.channels
            .get(&number)
            .is_some_and(|c| c.peer != peer && reserved(c))
        {
            return Err((400, "Bad Request"));
        }
        if a.channels
            .iter()
            .any(|(n, c)| *n != number && c.peer == peer && reserved(c))
        {
            return Err((400, "Bad Request"));
        }
        let kept = match a.channels.get_mut(&number) {
            // A refresh keeps the binding the kernel has, and its count.
            Some(c) if c.peer == peer && c.offloaded.is_some() => {
                c.offloaded.take().map(|b| (b, c.baseline))
            }
            _ => None,
        };
        let (offloaded, baseline) = match kept {
            Some((b, baseline)) => (Some(b), baseline),
            None => {
                let b = relay_local.and_then(|l| self.offload(key, l, number, peer));
                let baseline = match (&self.fast, b) {
                    (Some(f), Some(b)) => f.slot_totals(b.slot),
                    _ => Totals::default(),
                };
                (b, baseline)
            }
        };
        a.channels.insert(
            number,
            Channel {
                peer,
                expires: now + CHANNEL_LIFETIME,
                offloaded,
                baseline,
            },
        );
        let perm = now + PERMISSION_LIFETIME;
        let e = a.permissions.entry(peer.ip()).or_insert(perm);
        *e = (*e).max(perm);
        Ok(message::response(
            MessageClass::SuccessResponse,
            CHANNEL_BIND,
            req.transaction_id(),
        ))
    }

    async fn send_indication(&self, key: AllocKey, req: &Msg) {
        let (Some(peer), Some(data)) = (
            req.get_attribute::<XorPeerAddress>(),
            req.get_attribute::<Data>(),
        ) else {
            return;
        };
        let peer = peer.address();
        let relay = {
            let allocs = self.allocations();
            // A peer of a family the allocation lacks can have no permission either.
            match allocs.get(&key) {
                Some(a) if a.permitted(peer.ip(), Instant::now()) => {
                    match a.relay_toward(peer.ip()) {
                        Some(r) => r.sock.clone(),
                        None => return,
                    }
                }
                Some(_) => {
                    self.counters
                        .dropped_no_permission
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
                None => return,
            }
        };
        if relay.send_to(data.data(), peer).await.is_ok() {
            self.relayed(&key, true, data.data().len());
        }
    }

    /// Expires allocations, permissions and channels (channels are kept for their cooldown).
    pub fn sweep(&self, now: Instant) {
        let mut allocs = self.allocations();
        let mut taken_back = Vec::new();
        allocs.retain(|key, a| {
            if a.expires <= now {
                self.log_end(key, a, "expired");
                a.stop();
                taken_back.extend(a.channels.values_mut().filter_map(|c| c.offloaded.take()));
                return false;
            }
            a.permissions.retain(|_, e| *e > now);
            // A channel leaves the kernel when it expires or its peer's permission does.
            let permissions = &a.permissions;
            for c in a.channels.values_mut() {
                if c.offloaded.is_some()
                    && (c.expires <= now || !permissions.contains_key(&c.peer.ip()))
                {
                    let b = c.offloaded.take();
                    // What the kernel relayed for it stays the allocation's.
                    if let (Some(fast), Some(b)) = (&self.fast, b) {
                        a.kernel_done = a
                            .kernel_done
                            .plus(fast.slot_totals(b.slot).since(c.baseline));
                    }
                    taken_back.extend(b);
                }
            }
            a.channels.retain(|_, c| c.expires + CHANNEL_COOLDOWN > now);
            true
        });
        drop(allocs);
        for b in taken_back {
            self.take_back(b);
        }
        self.reservations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, r| r.expires > now);
    }
}

/// A successful Allocate: the relayed addresses (one per family), the client's reflexive
/// address, the lifetime, and why a second family is missing when it is.
fn allocated(
    req: &Msg,
    client: SocketAddr,
    relayed: &[SocketAddr],
    second_error: Option<AddressErrorCode>,
    reserved: Option<u64>,
    lifetime: Duration,
) -> Msg {
    let mut m = message::response(
        MessageClass::SuccessResponse,
        ALLOCATE,
        req.transaction_id(),
    );
    for r in relayed {
        m.add_attribute(XorRelayAddress::new(*r));
    }
    if let Some(e) = second_error {
        m.add_attribute(e);
    }
    if let Some(t) = reserved {
        m.add_attribute(ReservationToken::new(t));
    }
    m.add_attribute(XorMappedAddress::new(client));
    if let Ok(l) = Lifetime::new(lifetime) {
        m.add_attribute(l);
    }
    m
}

/// RFC 8656 §7.2: the requested lifetime up to the maximum, but never under the default.
fn lifetime(req: &Msg) -> Duration {
    req.get_attribute::<Lifetime>()
        .map(|l| l.lifetime().min(MAX_LIFETIME).max(DEFAULT_LIFETIME))
        .unwrap_or(DEFAULT_LIFETIME)
}

/// Which relayed ports an Allocate may take: any, an even one (EVEN-PORT), or an even one with
/// the port above it free too, to be reserved (EVEN-PORT with its R bit, for RTP and RTCP).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ports {
    Any,
    Even,
    EvenPair,
}

/// A UDP socket on a free port of the range from a random start (and the one above it, for
/// `Ports::EvenPair`).
fn bind_in_range(
    ip: IpAddr,
    min: u16,
    max: u16,
    ports: Ports,
) -> Option<(UdpSocket, Option<UdpSocket>)> {
    let span = (max - min) as u32 + 1;
    let start = rand::random::<u32>() % span;
    for i in 0..span.min(4096) {
        let port = min + ((start + i) % span) as u16;
        if ports != Ports::Any && port % 2 == 1 {
            continue;
        }
        let Ok(s) = bind_udp(SocketAddr::new(ip, port)) else {
            continue;
        };
        if ports != Ports::EvenPair {
            return Some((s, None));
        }
        if port < max
            && let Ok(above) = bind_udp(SocketAddr::new(ip, port + 1))
        {
            return Some((s, Some(above)));
        }
    }
    None
}

/// A UDP socket on `addr`; IPv6 ones take IPv6 only, so an IPv6 relayed address never sends to
/// or hears from IPv4 hosts through mapped addresses.
fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    UdpSocket::from_std(sock.into())
}

async fn peer_loop(relay: Arc<Relay>, key: AllocKey, sock: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        relay.on_peer_datagram(key, peer, &buf[..n]).await;
    }
}

#[cfg(test)]
mod tests;
