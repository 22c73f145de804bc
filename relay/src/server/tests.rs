//! The relay's state machine over real UDP on loopback, driven by the crate's TURN client:
//! quotas, refresh, channel rules, timers, and garbage.

use std::{
    net::{Ipv6Addr, SocketAddr},
    time::Duration,
};

use stun_codec::{
    Message, MessageClass, TransactionId,
    rfc5389::{
        attributes::{ErrorCode, Nonce, Realm, XorMappedAddress},
        methods::BINDING,
    },
    rfc5766::{
        attributes::{
            Data, EvenPort, Lifetime, RequestedTransport, ReservationToken, XorPeerAddress,
            XorRelayAddress,
        },
        methods::{ALLOCATE, CREATE_PERMISSION, DATA, REFRESH, SEND},
    },
    rfc8656::attributes::{AdditionalAddressFamily, AddressFamily, RequestedAddressFamily},
};

use super::*;
use crate::client::TurnClient;

fn config(port: u16, user_quota: u32) -> RelayConfig {
    RelayConfig {
        listen: vec![SocketAddr::from(([127, 0, 0, 1], port))],
        relay_ip: vec![],
        external_ip: vec![],
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

type Served = (Arc<Relay>, SocketAddr, tokio::runtime::Runtime);

/// A relay on a free loopback port, served by a runtime of its own.
fn start(user_quota: u32) -> Served {
    serve(|_| {}, user_quota, None)
}

/// As [`start`], with the configuration adjusted by `tune` and an optional fast path.
fn serve(
    tune: impl FnOnce(&mut RelayConfig),
    user_quota: u32,
    fast: Option<(Arc<dyn crate::fast_path::FastPath>, u32)>,
) -> Served {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = config(port, user_quota);
    tune(&mut cfg);
    let relay = Relay::with_fast_path(cfg, fast).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.spawn(relay.clone().serve());
    std::thread::sleep(Duration::from_millis(100));
    (relay, SocketAddr::from(([127, 0, 0, 1], port)), rt)
}

/// Relayed addresses of both families (relay_ip), or none configured: only the IPv4
/// listening address; ::1 allowed as a peer beside 127.0.0.0/8.
fn dual_stack(relay_ip: Vec<IpAddr>) -> impl FnOnce(&mut RelayConfig) {
    move |cfg| {
        cfg.relay_ip = relay_ip;
        cfg.allowed_peer_ip.push("::1/128".parse().unwrap());
    }
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
    let recorder = Arc::new(Recorder::default());
    let (relay, server, _rt) = serve(
        |_| {},
        0,
        Some((recorder.clone() as Arc<dyn crate::fast_path::FastPath>, 4)),
    );
    let mut a = client(server);
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
        (b.channel, b.peer, b.client),
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

/// A relay with relayed addresses of both families (relay_ip) or only IPv4 (none configured:
/// the IPv4 listening address).
fn start_with(relay_ip: Vec<IpAddr>) -> Served {
    serve(dual_stack(relay_ip), 0, None)
}

fn family(f: AddressFamily) -> Vec<message::Attribute> {
    vec![
        RequestedTransport::new(17).into(),
        RequestedAddressFamily::new(f).into(),
    ]
}

fn relayed_addresses(m: &Msg) -> Vec<SocketAddr> {
    m.attributes()
        .filter_map(|a| match a {
            message::Attribute::XorRelayAddress(r) => Some(r.address()),
            _ => None,
        })
        .collect()
}

/// An Allocate asking for both families (ADDITIONAL-ADDRESS-FAMILY IPv6); it must succeed.
fn dual_stack_allocate(c: &mut TurnClient) -> Msg {
    let ok = c
        .request(
            ALLOCATE,
            vec![
                RequestedTransport::new(17).into(),
                AdditionalAddressFamily::new(AddressFamily::V6).into(),
            ],
        )
        .unwrap();
    assert_eq!(ok.class(), MessageClass::SuccessResponse, "{:?}", code(&ok));
    ok
}

fn udp_peer(addr: &str) -> std::net::UdpSocket {
    let s = std::net::UdpSocket::bind(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

/// Sends a Send indication (no answer comes).
fn send_indication(c: &TurnClient, server: SocketAddr, peer: SocketAddr, data: &[u8]) {
    let mut m = Message::new(
        MessageClass::Indication,
        SEND,
        TransactionId::new(rand::random()),
    );
    m.add_attribute(XorPeerAddress::new(peer));
    m.add_attribute(Data::new(data.to_vec()).unwrap());
    c.sock.send_to(&message::encode(m, None), server).unwrap();
}

#[test]
fn ipv6_relayed_addresses_carry_data_to_ipv6_peers_only() {
    let (_relay, server, _rt) =
        start_with(vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()]);
    // A client on IPv4 asks for an IPv6 relayed address (REQUESTED-ADDRESS-FAMILY).
    let mut a = client(server);
    let ok = a.request(ALLOCATE, family(AddressFamily::V6)).unwrap();
    assert_eq!(ok.class(), MessageClass::SuccessResponse, "{:?}", code(&ok));
    let relayed = relayed_addresses(&ok);
    assert_eq!(relayed.len(), 1, "{relayed:?}");
    assert_eq!(relayed[0].ip(), "::1".parse::<IpAddr>().unwrap());
    // IPv4 peers do not fit an IPv6 allocation: 443, for channels and permissions alike.
    let v4_peer = udp_peer("127.0.0.1:0");
    let err = a
        .channel_bind(0x4001, v4_peer.local_addr().unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("443"), "{err}");
    let perm = a
        .request(
            CREATE_PERMISSION,
            vec![XorPeerAddress::new(v4_peer.local_addr().unwrap()).into()],
        )
        .unwrap();
    assert_eq!(code(&perm), Some(443));
    // An IPv6 peer through a channel: out from the relayed address, back as ChannelData.
    let peer = udp_peer("[::1]:0");
    a.channel_bind(0x4001, peer.local_addr().unwrap()).unwrap();
    a.send_channel(0x4001, b"over six").unwrap();
    let mut buf = [0u8; 200];
    let (n, from) = peer.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"over six"[..], relayed[0]));
    peer.send_to(b"back", from).unwrap();
    let (n, _) = a.sock.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], &[0x40, 0x01, 0, 4, b'b', b'a', b'c', b'k']);
    // Another IPv6 peer through Send and Data indications.
    let other = udp_peer("[::1]:0");
    let perm = a
        .request(
            CREATE_PERMISSION,
            vec![XorPeerAddress::new(other.local_addr().unwrap()).into()],
        )
        .unwrap();
    assert_eq!(perm.class(), MessageClass::SuccessResponse);
    send_indication(&a, server, other.local_addr().unwrap(), b"indicated");
    let (n, from) = other.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"indicated"[..], relayed[0]));
    other.send_to(b"data", from).unwrap();
    let (n, _) = a.sock.recv_from(&mut buf).unwrap();
    let data = message::decode(&buf[..n]).expect("a Data indication");
    assert_eq!(
        (
            data.method(),
            data.get_attribute::<XorPeerAddress>().map(|p| p.address()),
            data.get_attribute::<Data>().map(|d| d.data().to_vec())
        ),
        (
            DATA,
            Some(other.local_addr().unwrap()),
            Some(b"data".to_vec())
        )
    );
    // A Send indication toward an IPv4 peer goes nowhere.
    send_indication(&a, server, v4_peer.local_addr().unwrap(), b"lost");
    assert!(
        v4_peer.recv_from(&mut buf).is_err(),
        "nothing to the IPv4 peer"
    );
    // A Refresh naming the other family is a mismatch; naming its own is a refresh.
    let wrong = a
        .request(
            REFRESH,
            vec![RequestedAddressFamily::new(AddressFamily::V4).into()],
        )
        .unwrap();
    assert_eq!(code(&wrong), Some(443));
    let right = a
        .request(
            REFRESH,
            vec![RequestedAddressFamily::new(AddressFamily::V6).into()],
        )
        .unwrap();
    assert_eq!(right.class(), MessageClass::SuccessResponse);
}

#[test]
fn dual_stack_allocations_relay_each_family_from_its_own_address() {
    let (relay, server, _rt) =
        start_with(vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()]);
    // Both attributes at once, or IPv4 as the additional family: 400.
    let mut bad = client(server);
    let mut both = family(AddressFamily::V6);
    both.push(AdditionalAddressFamily::new(AddressFamily::V6).into());
    assert_eq!(code(&bad.request(ALLOCATE, both).unwrap()), Some(400));
    let additional_v4 = vec![
        RequestedTransport::new(17).into(),
        AdditionalAddressFamily::new(AddressFamily::V4).into(),
    ];
    assert_eq!(
        code(&bad.request(ALLOCATE, additional_v4).unwrap()),
        Some(400)
    );
    assert_eq!(relay.status().allocations, 0);
    // ADDITIONAL-ADDRESS-FAMILY IPv6: an IPv4 and an IPv6 relayed address.
    let mut a = client(server);
    let ok = dual_stack_allocate(&mut a);
    let relayed = relayed_addresses(&ok);
    assert_eq!(
        relayed.iter().map(|r| r.is_ipv4()).collect::<Vec<_>>(),
        [true, false],
        "{relayed:?}"
    );
    let (p4, p6) = (udp_peer("127.0.0.1:0"), udp_peer("[::1]:0"));
    a.channel_bind(0x4001, p4.local_addr().unwrap()).unwrap();
    a.channel_bind(0x4002, p6.local_addr().unwrap()).unwrap();
    a.send_channel(0x4001, b"four").unwrap();
    a.send_channel(0x4002, b"six").unwrap();
    let mut buf = [0u8; 100];
    let (n, from4) = p4.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from4), (&b"four"[..], relayed[0]));
    let (n, from6) = p6.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from6), (&b"six"[..], relayed[1]));
    // An IPv4 host dressed as an IPv6 address (::ffff:127.0.0.1) is refused, even with
    // 127.0.0.0/8 allowed: it would reach IPv4 past the IPv4 rules.
    let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{}", p4.local_addr().unwrap().port())
        .parse()
        .unwrap();
    assert!(
        a.channel_bind(0x4003, mapped)
            .unwrap_err()
            .to_string()
            .contains("403")
    );
    let status = relay.status();
    assert_eq!(
        status.per_allocation[0].relayed,
        format!("{}, {}", relayed[0], relayed[1])
    );
    a.release().unwrap();
    assert_eq!(relay.status().allocations, 0);
}

#[test]
fn a_family_the_relay_lacks_is_refused_or_reported() {
    // No relay_ip: the listening address (IPv4) is the only one.
    let (relay, server, _rt) = start_with(vec![]);
    let mut a = client(server);
    assert_eq!(
        code(&a.request(ALLOCATE, family(AddressFamily::V6)).unwrap()),
        Some(440)
    );
    assert_eq!(relay.status().allocations, 0);
    // Dual-stack asked: the IPv4 allocation stands, and ADDRESS-ERROR-CODE says why IPv6 is
    // missing.
    let ok = dual_stack_allocate(&mut a);
    let relayed = relayed_addresses(&ok);
    assert_eq!(relayed.len(), 1, "{relayed:?}");
    assert_eq!(relayed[0].ip(), server.ip());
    let e = ok
        .get_attribute::<message::AddressErrorCode>()
        .expect("ADDRESS-ERROR-CODE");
    assert_eq!((e.family, e.code), (AddressFamily::V6, 440));
    assert_eq!(relay.status().allocations, 1);
}

#[test]
fn even_ports_and_reservations_keep_their_family() {
    let (relay, server, _rt) =
        start_with(vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()]);
    // EVEN-PORT with its R bit on an IPv6 allocation: an even port, the one above reserved.
    let mut rtp = client(server);
    let mut asked = family(AddressFamily::V6);
    asked.push(EvenPort::new(true).into());
    let ok = rtp.request(ALLOCATE, asked).unwrap();
    assert_eq!(ok.class(), MessageClass::SuccessResponse, "{:?}", code(&ok));
    let even = relayed_addresses(&ok)[0];
    assert_eq!((even.is_ipv6(), even.port() % 2), (true, 0), "{even}");
    let token = ok
        .get_attribute::<ReservationToken>()
        .expect("RESERVATION-TOKEN")
        .token();
    // The token and a family at once: 400.
    let mut rtcp = client(server);
    let mut both = family(AddressFamily::V6);
    both.push(ReservationToken::new(token).into());
    assert_eq!(code(&rtcp.request(ALLOCATE, both).unwrap()), Some(400));
    // The token alone: the reserved port, in the reserving allocation's family.
    let with_token = vec![
        RequestedTransport::new(17).into(),
        ReservationToken::new(token).into(),
    ];
    let ok = rtcp.request(ALLOCATE, with_token.clone()).unwrap();
    assert_eq!(ok.class(), MessageClass::SuccessResponse, "{:?}", code(&ok));
    assert_eq!(
        relayed_addresses(&ok),
        vec![SocketAddr::new(even.ip(), even.port() + 1)]
    );
    // A token is good once.
    let mut late = client(server);
    assert_eq!(
        code(&late.request(ALLOCATE, with_token).unwrap()),
        Some(508)
    );
    // EVEN-PORT without R: an even port and no reservation.
    let mut plain = client(server);
    let ok = plain
        .request(
            ALLOCATE,
            vec![
                RequestedTransport::new(17).into(),
                EvenPort::new(false).into(),
            ],
        )
        .unwrap();
    assert_eq!(relayed_addresses(&ok)[0].port() % 2, 0);
    assert!(ok.get_attribute::<ReservationToken>().is_none());
    // Reservations not taken in time are let go.
    let mut again = client(server);
    let ok = again
        .request(
            ALLOCATE,
            vec![
                RequestedTransport::new(17).into(),
                EvenPort::new(true).into(),
            ],
        )
        .unwrap();
    assert!(ok.get_attribute::<ReservationToken>().is_some());
    assert_eq!(relay.reservations.lock().unwrap().len(), 1);
    relay.sweep(Instant::now() + RESERVATION_LIFETIME + Duration::from_secs(1));
    assert_eq!(relay.reservations.lock().unwrap().len(), 0);
}

/// A client on IPv4 with an IPv6 relayed address: the relay translates between the families,
/// which the kernel's path does not, so these channels stay in userspace.
#[test]
fn channels_across_families_stay_in_userspace_and_use_no_kernel_slot() {
    let recorder = Arc::new(Recorder::default());
    let (relay, server, _rt) = serve(
        dual_stack(vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()]),
        0,
        Some((recorder.clone() as Arc<dyn crate::fast_path::FastPath>, 2)),
    );
    let mut a = client(server);
    let ok = a.request(ALLOCATE, family(AddressFamily::V6)).unwrap();
    assert_eq!(ok.class(), MessageClass::SuccessResponse);
    for (n, peer) in [
        (0x4001, "[::1]:9"),
        (0x4002, "[::1]:10"),
        (0x4003, "[::1]:11"),
    ] {
        a.channel_bind(n, peer.parse().unwrap()).unwrap();
    }
    assert!(recorder.bound.lock().unwrap().is_empty());
    assert_eq!(relay.free_slots.lock().unwrap().len(), 2, "no slot used up");
    assert_eq!(relay.status().channels, 3);
}

/// IPv6 all the way (a client over IPv6, an IPv6 relayed address, an IPv6 peer): the kernel
/// takes the channel, with the IPv6 addresses as they are.
#[test]
fn ipv6_channels_go_to_the_fast_path() {
    let recorder = Arc::new(Recorder::default());
    let port6 = std::net::UdpSocket::bind("[::1]:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (relay, _server, _rt) = serve(
        |cfg| {
            dual_stack(vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()])(cfg);
            cfg.listen
                .push(SocketAddr::from((Ipv6Addr::LOCALHOST, port6)));
        },
        0,
        Some((recorder.clone() as Arc<dyn crate::fast_path::FastPath>, 2)),
    );
    let server6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port6));
    let mut a = TurnClient::new("[::1]:0".parse().unwrap(), server6, "alice", "pw").unwrap();
    let ok = a.request(ALLOCATE, family(AddressFamily::V6)).unwrap();
    assert_eq!(ok.class(), MessageClass::SuccessResponse, "{:?}", code(&ok));
    let relayed = ok.get_attribute::<XorRelayAddress>().unwrap().address();
    let peer: SocketAddr = "[::1]:9".parse().unwrap();
    a.channel_bind(0x4001, peer).unwrap();
    let bound = recorder.bound.lock().unwrap().clone();
    assert_eq!(bound.len(), 1, "{bound:?}");
    let b = bound[0];
    assert_eq!(
        (b.channel, b.peer, b.client, b.listen, b.relay),
        (0x4001, peer, a.sock.local_addr().unwrap(), server6, relayed)
    );
    assert_eq!(relay.status().offloaded_channels, 1);
}
