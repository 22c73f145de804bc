//! The relay's state machine over real UDP on loopback, driven by a client made of stun_codec
//! messages: quotas, refresh, channel rules, timers, and garbage.

use std::{net::SocketAddr, time::Duration};

use stun_codec::{
    Message, MessageClass, TransactionId,
    rfc5389::{
        attributes::{ErrorCode, MessageIntegrity, Nonce, Realm, Username, XorMappedAddress},
        methods::BINDING,
    },
    rfc5766::{
        attributes::{Lifetime, RequestedTransport, XorPeerAddress},
        methods::{ALLOCATE, CHANNEL_BIND, REFRESH},
    },
};
use tokio::net::UdpSocket;

use super::*;
use crate::message::{ChannelNumber, decode, encode};

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
    }
}

async fn start(user_quota: u32) -> (Arc<Relay>, SocketAddr) {
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let relay = Relay::new(config(port, user_quota)).unwrap();
    tokio::spawn(relay.clone().serve());
    tokio::time::sleep(Duration::from_millis(100)).await;
    (relay, SocketAddr::from(([127, 0, 0, 1], port)))
}

struct Client {
    sock: UdpSocket,
    server: SocketAddr,
    nonce: Option<String>,
}

impl Client {
    async fn new(server: SocketAddr) -> Client {
        Client { sock: UdpSocket::bind("127.0.0.1:0").await.unwrap(), server, nonce: None }
    }

    async fn exchange(&self, m: Msg) -> Msg {
        self.sock.send_to(&encode(m, None), self.server).await.unwrap();
        let mut buf = vec![0u8; 2048];
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), self.sock.recv_from(&mut buf)).await.expect("an answer").unwrap();
        decode(&buf[..n]).expect("a STUN answer")
    }

    /// A request with long-term credentials, fetching the nonce first when there is none.
    async fn request(&mut self, method: stun_codec::Method, attrs: Vec<crate::message::Attribute>) -> Msg {
        loop {
            let mut m = Message::new(MessageClass::Request, method, TransactionId::new(rand::random()));
            for a in attrs.clone() {
                m.add_attribute(a);
            }
            if let Some(nonce) = &self.nonce {
                let (user, realm) = (Username::new("alice".into()).unwrap(), Realm::new("test.example".into()).unwrap());
                m.add_attribute(user.clone());
                m.add_attribute(realm.clone());
                m.add_attribute(Nonce::new(nonce.clone()).unwrap());
                let mi = MessageIntegrity::new_long_term_credential(&m, &user, &realm, "pw").unwrap();
                m.add_attribute(mi);
            }
            let answer = self.exchange(m).await;
            let code = answer.get_attribute::<ErrorCode>().map(|e| e.code());
            if matches!(code, Some(401) | Some(438)) && self.nonce.as_deref() != answer.get_attribute::<Nonce>().map(|n| n.value()) {
                self.nonce = answer.get_attribute::<Nonce>().map(|n| n.value().to_string());
                continue;
            }
            return answer;
        }
    }

    async fn allocate(&mut self) -> Msg {
        self.request(ALLOCATE, vec![RequestedTransport::new(17).into()]).await
    }
}

fn code(m: &Msg) -> Option<u16> {
    m.get_attribute::<ErrorCode>().map(|e| e.code())
}

#[tokio::test]
async fn quota_refresh_and_unauthenticated_requests() {
    let (relay, server) = start(1).await;
    let mut a = Client::new(server).await;
    // Without credentials: 401 with a realm and a nonce, and no state kept.
    let bare = a.exchange(Message::new(MessageClass::Request, ALLOCATE, TransactionId::new([1; 12]))).await;
    assert_eq!(code(&bare), Some(401));
    assert!(bare.get_attribute::<Realm>().is_some() && bare.get_attribute::<Nonce>().is_some());
    assert_eq!(relay.status().allocations, 0);
    let ok = a.allocate().await;
    assert_eq!(ok.class(), MessageClass::SuccessResponse, "{:?}", code(&ok));
    assert_eq!(ok.get_attribute::<Lifetime>().map(|l| l.lifetime()), Some(DEFAULT_LIFETIME));
    // One allocation per user: a second client of alice's is refused.
    let mut b = Client::new(server).await;
    assert_eq!(code(&b.allocate().await), Some(486));
    // A wrong transport.
    let mut c = Client::new(server).await;
    assert_eq!(code(&c.request(ALLOCATE, vec![RequestedTransport::new(6).into()]).await), Some(442));
    // Refresh with lifetime 0 deletes; then b may allocate.
    let gone = a.request(REFRESH, vec![Lifetime::new(Duration::ZERO).unwrap().into()]).await;
    assert_eq!(gone.class(), MessageClass::SuccessResponse);
    assert_eq!(relay.status().allocations, 0);
    assert_eq!(b.allocate().await.class(), MessageClass::SuccessResponse);
    // Garbage costs nothing and breaks nothing: Binding still answers.
    b.sock.send_to(&[0x00, 0x01, 0x00, 0x08, 0x21, 0x12], server).await.unwrap();
    b.sock.send_to(&[0xff; 100], server).await.unwrap();
    let binding = b.exchange(Message::new(MessageClass::Request, BINDING, TransactionId::new([2; 12]))).await;
    assert_eq!(binding.get_attribute::<XorMappedAddress>().map(|x| x.address()), Some(b.sock.local_addr().unwrap()));
}

#[tokio::test]
async fn channels_stay_with_their_peer_and_everything_expires_on_time() {
    let (relay, server) = start(0).await;
    let mut a = Client::new(server).await;
    assert_eq!(a.allocate().await.class(), MessageClass::SuccessResponse);
    let peer_a: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let peer_b: SocketAddr = "127.0.0.1:10".parse().unwrap();
    let bind = |n: u16, p: SocketAddr| vec![ChannelNumber::new(n).unwrap().into(), XorPeerAddress::new(p).into()];
    assert_eq!(a.request(CHANNEL_BIND, bind(0x4001, peer_a)).await.class(), MessageClass::SuccessResponse);
    assert_eq!(code(&a.request(CHANNEL_BIND, bind(0x4001, peer_b)).await), Some(400), "the channel is peer A's");
    assert_eq!(code(&a.request(CHANNEL_BIND, bind(0x7ffe, peer_a)).await), Some(400), "peer A has its channel");
    assert_eq!(a.request(CHANNEL_BIND, bind(0x4001, peer_a)).await.class(), MessageClass::SuccessResponse, "a refresh");
    let s = relay.status();
    assert_eq!((s.allocations, s.permissions, s.channels), (1, 1, 1));
    let t0 = Instant::now();
    // Permissions last 5 minutes, channels 10, the allocation 10 (the default).
    relay.sweep(t0 + PERMISSION_LIFETIME + Duration::from_secs(1));
    let s = relay.status_at(t0 + PERMISSION_LIFETIME + Duration::from_secs(1));
    assert_eq!((s.allocations, s.permissions, s.channels), (1, 0, 1));
    relay.sweep(t0 + DEFAULT_LIFETIME + Duration::from_secs(1));
    assert_eq!(relay.status().allocations, 0);
}
