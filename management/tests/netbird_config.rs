//! What a stock NetBird client needs to start, in Login and on the Sync stream: the Signal
//! server, NetBird relays with time-limited tokens (renewed before they expire), STUN servers.
//! Tokens are checked here by recomputing NetBird's scheme from its description (payload = expiry
//! unix time, signature = base64(HMAC-SHA256(SHA-256(secret), payload))).

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use hmac::Mac;
use management_proto::pb;
use serde_json::json;
use sha2::Digest;

const SECRET: &str = "relay-auth-secret";

fn expected_signature(payload: &str) -> String {
    use base64::Engine;
    let key = sha2::Sha256::digest(SECRET.as_bytes());
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(payload.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The relay part, after checking the token: its expiry.
fn checked_relay(config: &pb::NetbirdConfig, ttl: u64) -> u64 {
    let relay = config.relay.as_ref().expect("relay");
    assert_eq!(
        relay.urls,
        vec!["rels://relay.example:443", "rel://relay2.example:80"]
    );
    assert_eq!(
        relay.token_signature,
        expected_signature(&relay.token_payload)
    );
    let expiry: u64 = relay.token_payload.parse().expect("payload is the expiry");
    assert!(
        expiry.abs_diff(now() + ttl) <= 2,
        "expiry {expiry} vs now {} + {ttl}",
        now()
    );
    expiry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_and_relay_tokens_reach_peers_and_are_renewed() {
    let dir = TempDir::new("nbconfig");
    let mut o = options(&dir);
    o.signal = Some("https://signal.example:443".into());
    o.stuns = vec!["stun:stun.example:3478".into()];
    o.relay = Some(management::RelayOptions {
        urls: vec![
            "rels://relay.example:443".into(),
            "rel://relay2.example:80".into(),
        ],
        secret: SECRET.into(),
        ttl: Duration::from_secs(4),
    });
    let m = std::sync::Arc::new(management::Management::open(&o).unwrap());
    let (url, _server) = serve(m.clone()).await;
    let (_, key) = call(
        &m,
        "POST",
        "/api/setup-keys",
        Some(json!({"name": "k", "type": "reusable", "auto_groups": []})),
    )
    .await;
    let mut peer = TestPeer::connect(&url).await;
    let login = peer.login(key["key"].as_str().unwrap()).await.unwrap();
    let config = login.netbird_config.expect("Login carries the config");
    let signal = config.signal.as_ref().expect("signal");
    assert_eq!(
        (signal.uri.as_str(), signal.protocol),
        (
            "signal.example:443",
            pb::host_config::Protocol::Https as i32
        )
    );
    assert_eq!(config.stuns[0].uri, "stun:stun.example:3478");
    let first = checked_relay(&config, 4);

    // Sync: the first message carries the config; a renewed token alone comes at ¾ of 4 s.
    let mut stream = peer.sync().await.unwrap();
    let open = |msg: pb::EncryptedMessage| -> pb::SyncResponse {
        peer.key.open_message(&peer.server, &msg).unwrap()
    };
    let msg = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let initial = open(msg);
    assert!(initial.network_map.is_some());
    checked_relay(
        initial
            .netbird_config
            .as_ref()
            .expect("the first Sync message carries the config"),
        4,
    );
    let msg = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("a renewal within 5 s")
        .unwrap()
        .unwrap();
    let renewal = open(msg);
    assert!(renewal.network_map.is_none(), "the config alone");
    let renewed = checked_relay(renewal.netbird_config.as_ref().unwrap(), 4);
    assert!(renewed > first, "a later expiry: {renewed} after {first}");
    assert!(
        renewal.netbird_config.unwrap().signal.is_some(),
        "the whole config, not only the token"
    );
}

#[test]
fn a_signal_url_without_its_scheme_is_refused_at_start() {
    let dir = TempDir::new("nbconfig-bad");
    let mut o = options(&dir);
    o.signal = Some("signal.example:443".into());
    let err = management::Management::open(&o).err().expect("refused");
    assert!(err.to_string().contains("https://host:port"), "{err}");
}
