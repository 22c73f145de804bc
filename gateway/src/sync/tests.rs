//! The sync client against the real management service, in-process over loopback: events, not
//! kernel state (the namespace tests cover the data plane).

use std::{sync::Arc, time::Duration};

use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;

use super::*;

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(tag: &str) -> Dir {
    let p = std::env::temp_dir().join(format!("gateway-sync-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    Dir(p)
}

async fn next(rx: &mut mpsc::Receiver<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("an event within 5 s")
        .expect("sync task alive")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_follows_maps_and_stops_when_refused() {
    let data = dir("mgmt");
    let state = dir("state");
    let mut options = management::Options::new(&data.0);
    options.api_token = Some("token-for-tests".into());
    let m = Arc::new(management::Management::open(&options).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(management::serve(
        m.clone(),
        listener,
        None,
        std::future::pending(),
    ));

    let now = management::model::now();
    let secret = m
        .change(management::activity::Initiator::Api, |a| {
            let key = management::model::SetupKey {
                id: "k".into(),
                hashed_key: management::account::hash_setup_key("SECRET-KEY"),
                key_prefix: "SECRE".into(),
                legacy_key: None,
                name: "k".into(),
                kind: management::model::SetupKeyType::OneOff,
                created_at: now,
                expires_at: 0,
                updated_at: now,
                last_used: 0,
                revoked: false,
                used_times: 0,
                usage_limit: 1,
                auto_groups: vec![],
                ephemeral: false,
                allow_extra_dns_labels: false,
            };
            a.put_setup_key(key).map(|t| ("SECRET-KEY".to_string(), t))
        })
        .unwrap();

    let (tx, mut rx) = mpsc::channel(8);
    let opts = SyncOptions {
        url: url.clone(),
        setup_key: Some(secret),
        state_dir: state.0.clone(),
        ca_pem: None,
        ipv6_overlay: true,
    };
    tokio::spawn(run(
        opts.clone(),
        Identity::load_or_create(&state.0).unwrap(),
        tx,
    ));
    assert!(matches!(next(&mut rx).await, Event::Connected(true)));
    let Event::Map(first, _) = next(&mut rx).await else {
        panic!("expected a map")
    };
    assert!(first.policy.policies.is_empty(), "nothing allowed yet");
    // It announced the IPv6 overlay capability: its interface gets an address of the account's
    // IPv6 range as well, and the peer record says it supports IPv6.
    let v6: Vec<_> = first
        .interface_addresses
        .iter()
        .filter(|a| a.addr().is_ipv6())
        .collect();
    let account_v6 = m.read(|a| a.network_v6).expect("an IPv6 overlay range");
    assert!(
        v6.len() == 1 && ipnet::IpNet::from(account_v6).contains(&v6[0].addr()),
        "{:?} in {account_v6}",
        first.interface_addresses
    );
    assert!(m.read(|a| a.peers.values().all(|p| p.supports_ipv6)));
    assert!(Identity::load_or_create(&state.0).unwrap().is_registered());

    // A change the peer cares about arrives as a newer map.
    let peer_id = m.read(|a| a.peers.keys().next().unwrap().clone());
    m.change(management::activity::Initiator::Api, |a| {
        let mut p = a.peers[&peer_id].clone();
        p.ip = "100.64.0.1".parse().unwrap();
        a.update_peer(p).map(|t| ((), t))
    })
    .unwrap();
    let Event::Map(second, _) = next(&mut rx).await else {
        panic!("expected a map")
    };
    assert!(second.serial > first.serial);
    assert_eq!(second.own_address.to_string(), "100.64.0.1");

    // Deleted: the last empty map, then the end.
    m.change(management::activity::Initiator::Api, |a| {
        a.delete_peer(&peer_id).map(|t| ((), t))
    })
    .unwrap();
    let mut fatal = None;
    for _ in 0..4 {
        match next(&mut rx).await {
            Event::Fatal(why) => {
                fatal = Some(why);
                break;
            }
            _ => continue,
        }
    }
    let why = fatal.expect("the client gives up");
    assert!(why.contains("PermissionDenied"), "{why}");
}

/// A server that sends what the real one never does: unopenable, undecodable and untranslatable
/// messages. The client must report each as rejected and carry on with the next.
struct HostileServer {
    key: management_proto::WgKey,
}

#[tonic::async_trait]
impl pb::management_service_server::ManagementService for HostileServer {
    async fn login(
        &self,
        request: tonic::Request<pb::EncryptedMessage>,
    ) -> Result<tonic::Response<pb::EncryptedMessage>, Status> {
        let peer = request.get_ref().sender().unwrap();
        let response = pb::LoginResponse {
            peer_config: Some(pb::PeerConfig {
                address: "100.64.0.1/10".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        Ok(tonic::Response::new(
            self.key.seal_message(&peer, &response),
        ))
    }

    type SyncStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::EncryptedMessage, Status>> + Send>,
    >;

    async fn sync(
        &self,
        request: tonic::Request<pb::EncryptedMessage>,
    ) -> Result<tonic::Response<Self::SyncStream>, Status> {
        let peer = request.get_ref().sender().unwrap();
        let me = self.key.public().to_base64();
        let bad_rule = pb::FirewallRule {
            peer_ip: "100.64.0.9".into(),
            action: 1,
            protocol: 2,
            port: "99999".into(),
            ..Default::default()
        };
        let map = |serial: u64, rules: Vec<pb::FirewallRule>| pb::SyncResponse {
            network_map: Some(pb::NetworkMap {
                serial,
                firewall_rules: rules,
                firewall_rules_is_empty: false,
                ..Default::default()
            }),
            ..Default::default()
        };
        let good_rule = pb::FirewallRule {
            peer_ip: "100.64.0.9".into(),
            protocol: 2,
            port: "22".into(),
            ..Default::default()
        };
        let messages = vec![
            pb::EncryptedMessage {
                wg_pub_key: me.clone(),
                body: vec![7; 100],
                version: 0,
            },
            pb::EncryptedMessage {
                wg_pub_key: me.clone(),
                body: self.key.seal(&peer, &[0xff; 33]),
                version: 0,
            },
            self.key.seal_message(&peer, &map(4, vec![bad_rule])),
            self.key.seal_message(&peer, &map(5, vec![good_rule])),
        ];
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::iter(messages.into_iter().map(Ok)).chain(tokio_stream::pending()),
        )))
    }

    async fn get_server_key(
        &self,
        _: tonic::Request<pb::Empty>,
    ) -> Result<tonic::Response<pb::ServerKeyResponse>, Status> {
        Ok(tonic::Response::new(pb::ServerKeyResponse {
            key: self.key.public().to_base64(),
            ..Default::default()
        }))
    }

    async fn is_healthy(
        &self,
        _: tonic::Request<pb::Empty>,
    ) -> Result<tonic::Response<pb::Empty>, Status> {
        Ok(tonic::Response::new(pb::Empty {}))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_messages_are_rejected_one_by_one() {
    let state = dir("hostile");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = pb::management_service_server::ManagementServiceServer::new(HostileServer {
        key: management_proto::WgKey::generate(),
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let (tx, mut rx) = mpsc::channel(8);
    let opts = SyncOptions {
        url,
        setup_key: Some("ANY".into()),
        state_dir: state.0.clone(),
        ca_pem: None,
        ipv6_overlay: false,
    };
    tokio::spawn(run(opts, Identity::load_or_create(&state.0).unwrap(), tx));
    assert!(matches!(next(&mut rx).await, Event::Connected(true)));
    let mut reasons = Vec::new();
    for _ in 0..3 {
        match next(&mut rx).await {
            Event::Rejected(why) => reasons.push(why),
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
    assert!(reasons[0].contains("does not open"), "{reasons:?}");
    assert!(
        reasons[1].contains("not a valid SyncResponse"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].contains("serial 4") && reasons[2].contains("FirewallRules[0].Port"),
        "{reasons:?}"
    );
    match next(&mut rx).await {
        Event::Map(t, _) => {
            assert_eq!(t.serial, 5);
            assert_eq!(t.policy.policies.len(), 1);
        }
        other => panic!("the good map after the bad ones: {other:?}"),
    }
}
