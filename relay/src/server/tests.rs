//! The relay's state machine over real UDP on loopback, driven by the crate's TURN client:
//! quotas, refresh, channel rules, timers, and garbage.

use std::{net::SocketAddr, time::Duration};

use stun_codec::{
    Message, MessageClass, TransactionId,
    rfc5389::{
        attributes::{ErrorCode, Nonce, Realm, XorMappedAddress},
        methods::BINDING,
    },
    rfc5766::{
        attributes::{Lifetime, RequestedTransport},
        methods::ALLOCATE,
    },
};

use super::*;
use crate::client::TurnClient;

fn config(port: u16, user_quota: u32) -> RelayConfig {
    RelayConfig {
        listen: vec![SocketAddr::from(([127, 0, 0, 1], port))],
        relay_ip: None,
        external_ip: None,
        realm: "test.example".into(),
        users: [("alice".to_string(), "pw".to_string())].into(),
        static_auth_secret: None,
        min_port: 40000,
        max_port: 40999,
        user_quota,
        total_quota: 0,
        denied_peer_ip: vec![],
        // Loopback peers only because everything here runs on loopback.
        allowed_peer_ip: vec!["127.0.0.0/8".parse().unwrap()],
        metrics_addr: None,
        xdp: None,
    }
}

/// A relay on a free loopback port, served by a runtime of its own.
fn start(user_quota: u32) -> (Arc<Relay>, SocketAddr, tokio::runtime::Runtime) {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let relay = Relay::new(config(port, user_quota)).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.spawn(relay.clone().serve());
    std::thread::sleep(Duration::from_millis(100));
    (relay, SocketAddr::from(([127, 0, 0, 1], port)), rt)
}

fn client(server: SocketAddr) -> TurnClient {
    TurnClient::new("127.0.0.1:0".parse().unwrap(), server, "alice", "pw").unwrap()
}

fn code(m: &Msg) -> Option<u16> {
    m.get_attribute::<ErrorCode>().map(|e| e.code())
}

#[test]
fn quota_refresh_and_unauthenticated_requests() {
    let (relay, server, _rt) = start(1);
    let mut a = client(server);
    // Without credentials: 401 with a realm and a nonce, and no state kept.
    let bare = a
        .exchange(Message::new(
            MessageClass::Request,
            ALLOCATE,
            TransactionId::new([1; 12]),
        ))
        .unwrap();
    assert_eq!(code(&bare), Some(401));
    assert!(bare.get_attribute::<Realm>().is_some() && bare.get_attribute::<Nonce>().is_some());
    assert_eq!(relay.status().allocations, 0);
    let ok = a
        .request(ALLOCATE, vec![RequestedTransport::new(17).into()])
        .unwrap();
    assert_eq!(ok.class(), MessageClass::SuccessResponse, "{:?}", code(&ok));
    assert_eq!(
        ok.get_attribute::<Lifetime>().map(|l| l.lifetime()),
        Some(DEFAULT_LIFETIME)
    );
    // One allocation per user: a second client of alice's is refused.
    let mut b = client(server);
    assert!(b.allocate().unwrap_err().to_string().contains("486"));
    // A wrong transport.
    let mut c = client(server);
    assert_eq!(
        code(
            &c.request(ALLOCATE, vec![RequestedTransport::new(6).into()])
                .unwrap()
        ),
        Some(442)
    );
    // Another Allocate on the same 5-tuple (not a retransmission) is a mismatch.
    assert!(a.allocate().unwrap_err().to_string().contains("437"));
    // Refresh with lifetime 0 deletes; then b may allocate.
    a.release().unwrap();
    assert_eq!(relay.status().allocations, 0);
    b.allocate().unwrap();
    // Garbage costs nothing and breaks nothing: Binding still answers.
    b.sock
        .send_to(&[0x00, 0x01, 0x00, 0x08, 0x21, 0x12], server)
        .unwrap();
    b.sock.send_to(&[0xff; 100], server).unwrap();
    let binding = b
        .exchange(Message::new(
            MessageClass::Request,
            BINDING,
            TransactionId::new([2; 12]),
        ))
        .unwrap();
    assert_eq!(
        binding
            .get_attribute::<XorMappedAddress>()
            .map(|x| x.address()),
        Some(b.sock.local_addr().unwrap())
    );
}

#[test]
fn channels_stay_with_their_peer_and_everything_expires_on_time() {
    let (relay, server, _rt) = start(0);
    let mut a = client(server);
    a.allocate().unwrap();
    let peer_a: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let peer_b: SocketAddr = "127.0.0.1:10".parse().unwrap();
    a.channel_bind(0x4001, peer_a).unwrap();
    assert!(
        a.channel_bind(0x4001, peer_b)
            .unwrap_err()
            .to_string()
            .contains("400"),
        "the channel is peer A's"
    );
    assert!(
        a.channel_bind(0x7ffe, peer_a)
            .unwrap_err()
            .to_string()
            .contains("400"),
        "peer A has its channel"
    );
    a.channel_bind(0x4001, peer_a).expect("a refresh");
    let s = relay.status();
    assert_eq!((s.allocations, s.permissions, s.channels), (1, 1, 1));
    let t0 = Instant::now();
    // Permissions last 5 minutes, channels 10, the allocation 10 (the default).
    let later = t0 + PERMISSION_LIFETIME + Duration::from_secs(1);
    relay.sweep(later);
    let s = relay.status_at(later);
    assert_eq!((s.allocations, s.permissions, s.channels), (1, 0, 1));
    relay.sweep(t0 + DEFAULT_LIFETIME + Duration::from_secs(1));
    assert_eq!(relay.status().allocations, 0);
}

#[test]
fn channel_data_reaches_the_peer_and_comes_back_as_channel_data() {
    let (relay, server, _rt) = start(0);
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut a = client(server);
    let relayed = a.allocate().unwrap();
    a.channel_bind(0x4002, peer.local_addr().unwrap()).unwrap();
    a.send_channel(0x4002, b"to the peer").unwrap();
    let mut buf = [0u8; 100];
    let (n, from) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(
        (&buf[..n], from.port()),
        (&b"to the peer"[..], relayed.port())
    );
    peer.send_to(b"back", from).unwrap();
    let (n, _) = a.sock.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], &[0x40, 0x02, 0, 4, b'b', b'a', b'c', b'k']);
    // The relay counts a datagram once its send returned: the client may read it first.
    let deadline = Instant::now() + Duration::from_secs(2);
    while relay.status().to_client_packets == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let s = relay.status();
    assert_eq!(s.to_peer_packets, 1);
    // The allocation's own count: 11 bytes out, 4 back, all in userspace.
    let mine = &s.per_allocation[0];
    assert_eq!(
        (mine.userspace.to_peer_packets, mine.userspace.to_peer_bytes),
        (1, 11)
    );
    assert_eq!(
        (
            mine.userspace.to_client_packets,
            mine.userspace.to_client_bytes
        ),
        (1, 4)
    );
    assert_eq!(mine.xdp, Default::default());
}

/// A fast path that records what it is given.
#[derive(Default)]
struct Recorder {
    bound: Mutex<Vec<crate::fast_path::Binding>>,
    unbound: Mutex<Vec<crate::fast_path::Binding>>,
    /// What the "kernel" relayed per counter slot, as a test sets it.
    slots: Mutex<std::collections::HashMap<u32, crate::fast_path::Totals>>,
}

impl crate::fast_path::FastPath for Recorder {
    fn bind(&self, b: &crate::fast_path::Binding) -> anyhow::Result<()> {
        self.bound.lock().unwrap().push(*b);
        Ok(())
    }
    fn unbind(&self, b: &crate::fast_path::Binding) {
        self.unbound.lock().unwrap().push(*b);
    }
    fn totals(&self) -> crate::fast_path::Totals {
        self.slots
            .lock()
            .unwrap()
            .values()
            .fold(Default::default(), |a, t| a.plus(*t))
    }
    fn slot_totals(&self, slot: u32) -> crate::fast_path::Totals {
        self.slots
            .lock()
            .unwrap()
            .get(&slot)
            .copied()
            .unwrap_or_default()
    }
}

#[test]
fn bound_channels_go_to_the_fast_path_and_come_back_when_they_end() {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let recorder = Arc::new(Recorder::default());
    let relay = Relay::with_fast_path(
        config(port, 0),
        Some((recorder.clone() as Arc<dyn crate::fast_path::FastPath>, 4)),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.spawn(relay.clone().serve());
    std::thread::sleep(Duration::from_millis(100));
    let mut a = client(SocketAddr::from(([127, 0, 0, 1], port)));
    let relayed = a.allocate().unwrap();
    let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let kernel = |to_peer_packets, to_peer_bytes, to_client_packets| crate::fast_path::Totals {
        to_peer_packets,
        to_peer_bytes,
        to_client_packets,
        to_client_bytes: to_client_packets * 10,
    };
    // Slot 0 (the first one handed out) carries an earlier binding's count.
    recorder.slots.lock().unwrap().insert(0, kernel(5, 500, 0));
    a.channel_bind(0x4003, peer).unwrap();
    a.channel_bind(0x4003, peer).unwrap();
    let bound = recorder.bound.lock().unwrap().clone();
    assert_eq!(bound.len(), 1, "a refresh keeps the binding: {bound:?}");
    let b = bound[0];
    assert_eq!(
        (b.channel, SocketAddr::V4(b.peer), SocketAddr::V4(b.client)),
        (0x4003, peer, a.sock.local_addr().unwrap())
    );
    assert_eq!(b.relay.port(), relayed.port());
    assert_eq!(relay.status().offloaded_channels, 1);
    // Per allocation, the kernel's count is the slot's since the binding (the slot carried an
    // earlier binding's 5 packets; see before the bind).
    recorder
        .slots
        .lock()
        .unwrap()
        .insert(b.slot, kernel(5 + 3, 500 + 300, 2));
    let status = relay.status();
    let mine = &status.per_allocation[0];
    assert_eq!(
        (mine.client.clone(), mine.relayed.clone()),
        (
            a.sock.local_addr().unwrap().to_string(),
            relayed.to_string()
        )
    );
    assert_eq!(
        (mine.channels, mine.offloaded_channels, mine.permissions),
        (1, 1, 1)
    );
    assert_eq!(mine.xdp, kernel(3, 300, 2), "counted since bound");
    // The permission ends before the channel: the binding comes back to userspace, and what
    // the kernel relayed for it stays the allocation's.
    relay.sweep(Instant::now() + PERMISSION_LIFETIME + Duration::from_secs(1));
    assert_eq!(recorder.unbound.lock().unwrap().as_slice(), &[b]);
    recorder
        .slots
        .lock()
        .unwrap()
        .insert(b.slot, kernel(100, 10_000, 50));
    assert_eq!(
        relay.status().per_allocation[0].xdp,
        kernel(3, 300, 2),
        "a slot's later use is not this allocation's"
    );
    // A new binding, then the allocation released: it comes back too, and its slot is free.
    a.channel_bind(0x4004, "127.0.0.1:10".parse().unwrap())
        .unwrap();
    a.release().unwrap();
    assert_eq!(recorder.unbound.lock().unwrap().len(), 2);
    assert_eq!(relay.free_slots.lock().unwrap().len(), 4);
}
