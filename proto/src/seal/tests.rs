use super::*;
use crate::pb::{FirewallRule, NetworkMap, SyncResponse};

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

/// Known answer from NaCl's C implementation (the vector Go's x/crypto/nacl/box tests against):
/// sender secret 0x02 * 32, receiver secret 0x01 * 32, nonce 0x04 * 24, message 0x03 * 64.
#[test]
fn box_matches_nacl_known_answer() {
    let receiver = WgKey::from_bytes([1; 32]);
    let sender = WgKey::from_bytes([2; 32]);
    let body = sender.seal_with_nonce(&receiver.public(), &[4; 24], &[3; 64]);
    let expected = unhex(
        "78ea30b19d2341ebbdba54180f821eec265cf86312549bea8a37652a8bb94f07\
         b78a73ed1708085e6ddd0e943bbdeb8755079a37eb31d86163ce241164a47629\
         c0539f330b4914cd135b3855bc2a2dfc",
    );
    assert_eq!(&body[..NONCE_LEN], &[4; 24], "the nonce leads the body");
    assert_eq!(
        &body[NONCE_LEN..],
        expected.as_slice(),
        "tag then ciphertext, as NaCl lays them out"
    );
    assert_eq!(receiver.open(&sender.public(), &body).unwrap(), vec![3; 64]);
}

/// X25519 public key of the RFC 7748 section 6.1 test key (Alice).
#[test]
fn public_key_matches_rfc7748() {
    let alice = WgKey::from_bytes(
        unhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
            .try_into()
            .unwrap(),
    );
    assert_eq!(
        alice.public().as_bytes().to_vec(),
        unhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    );
}

#[test]
fn every_tampered_byte_fails_to_open() {
    let a = WgKey::generate();
    let b = WgKey::generate();
    let body = a.seal(&b.public(), b"network map");
    for i in 0..body.len() {
        let mut bad = body.clone();
        bad[i] ^= 0x01;
        assert_eq!(
            b.open(&a.public(), &bad),
            Err(OpenError::BadSeal),
            "flipped byte {i}"
        );
    }
    assert_eq!(
        b.open(&a.public(), &body[..39]),
        Err(OpenError::TooShort(39))
    );
    let stranger = WgKey::generate();
    assert_eq!(
        stranger.open(&a.public(), &body),
        Err(OpenError::BadSeal),
        "another receiver cannot open it"
    );
    assert_eq!(b.open(&a.public(), &body).unwrap(), b"network map");
}

#[test]
fn nonces_are_fresh() {
    let a = WgKey::generate();
    let b = WgKey::generate().public();
    assert_ne!(a.seal(&b, b"x")[..NONCE_LEN], a.seal(&b, b"x")[..NONCE_LEN]);
}

#[test]
fn generated_keys_are_clamped_and_round_trip_base64() {
    let k = WgKey::generate();
    let text = k.to_base64();
    assert_eq!(text.len(), 44);
    let raw = B64.decode(&text).unwrap();
    assert_eq!(raw[0] & 7, 0);
    assert_eq!(raw[31] & 0xc0, 0x40);
    assert_eq!(WgKey::from_base64(&text).unwrap().public(), k.public());
    let public: WgPublicKey = k.public().to_base64().parse().unwrap();
    assert_eq!(public, k.public());
    assert_eq!(
        WgPublicKey::from_base64("c2hvcnQ="),
        Err(KeyError::Malformed(8))
    );
    assert!(WgPublicKey::from_base64("not base64 at all!!").is_err());
}

#[test]
fn messages_round_trip_and_wrong_types_are_reported() {
    let server = WgKey::generate();
    let peer = WgKey::generate();
    let map = SyncResponse {
        network_map: Some(NetworkMap {
            serial: 7,
            firewall_rules: vec![FirewallRule {
                peer_ip: "100.64.0.9".into(),
                port: "443".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let sealed = server.seal_message(&peer.public(), &map);
    assert_eq!(sealed.sender().unwrap(), server.public());
    let opened: SyncResponse = peer.open_message(&server.public(), &sealed).unwrap();
    assert_eq!(opened, map);

    let mut junk = sealed.clone();
    junk.body = server.seal(&peer.public(), &[0xff; 9]);
    match peer.open_message::<SyncResponse>(&server.public(), &junk) {
        Err(OpenError::Decode { kind, .. }) => assert_eq!(kind, "SyncResponse"),
        other => panic!("expected a decode error, got {other:?}"),
    }
}

/// The wire layout of a FirewallRule is NetBird's: field numbers checked byte by byte.
#[test]
fn field_numbers_are_netbirds() {
    use prost::Message;
    let rule = FirewallRule {
        peer_ip: "1".into(),
        direction: 1,
        action: 1,
        protocol: 2,
        port: "8".into(),
        policy_id: vec![9],
        custom_protocol: 5,
        source_prefixes: vec![vec![100, 64, 0, 1, 32]],
        ..Default::default()
    };
    // (field << 3 | wire type): 1 len, 2 varint, 3 varint, 4 varint, 5 len, 7 len, 8 varint, 9 len.
    assert_eq!(
        rule.encode_to_vec(),
        vec![
            0x0a, 1, b'1', 0x10, 1, 0x18, 1, 0x20, 2, 0x2a, 1, b'8', 0x3a, 1, 9, 0x40, 5, 0x4a, 5,
            100, 64, 0, 1, 32
        ]
    );
    let map = NetworkMap {
        serial: 3,
        firewall_rules_is_empty: true,
        routes_firewall_rules_is_empty: true,
        ..Default::default()
    };
    assert_eq!(map.encode_to_vec(), vec![0x08, 3, 0x48, 1, 0x58, 1]);
}
