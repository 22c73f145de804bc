//! TLS on the listener, with certificates made here (a CA and server certificates it signs):
//! REST over HTTPS and gRPC over TLS (h2 by ALPN) both work; a client that does not trust the
//! CA and a plain-HTTP client get nothing; a renewed certificate is served without a restart,
//! a broken renewal keeps the last good one; a key that does not match its certificate stops
//! the start.

mod common;

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use common::*;
use management::tls::TlsFiles;
use management_proto::{
    WgKey, WgPublicKey, pb, pb::management_service_client::ManagementServiceClient,
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::{self, pki_types::ServerName};

struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        Ca(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    /// A server certificate for localhost and 127.0.0.1, written as PEM files.
    fn issue(&self, files: &TlsFiles) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &self.0)
            .unwrap();
        write(&files.cert, cert.pem().as_bytes());
        write(&files.key, key.serialize_pem().as_bytes());
        cert.der().to_vec()
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.0.der().clone()).unwrap();
        roots
    }
}

/// Replaces a file in one step, as certbot's renewal does (a reader never sees half of it).
fn write(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn serve_tls(
    m: Arc<management::Management>,
    files: TlsFiles,
) -> (SocketAddr, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (
        addr,
        tokio::spawn(management::serve(
            m,
            listener,
            Some(files),
            std::future::pending(),
        )),
    )
}

fn client_config(roots: rustls::RootCertStore, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

/// A TLS handshake as a client trusting `roots`; the certificate the server presented.
async fn handshake(
    addr: SocketAddr,
    roots: rustls::RootCertStore,
) -> Result<
    (
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        Vec<u8>,
    ),
    std::io::Error,
> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(client_config(roots, b"http/1.1"))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    Ok((tls, leaf))
}

/// GET `path` over HTTPS/1.1 with the token; status and JSON body.
async fn https_get(addr: SocketAddr, roots: rustls::RootCertStore, path: &str) -> (u16, Value) {
    let (mut tls, _) = handshake(addr, roots).await.expect("handshake");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Token {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    // The server may close without close_notify after the body; what was read counts.
    let _ = tls.read_to_end(&mut response).await;
    let text = String::from_utf8(response).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_and_grpc_over_tls_and_certificates_renewed_in_place() {
    let dir = TempDir::new("tls");
    let ca = Ca::new("test CA");
    let mut files = TlsFiles::new(dir.0.join("fullchain.pem"), dir.0.join("privkey.pem"));
    files.reload_check = Duration::from_millis(100);
    let first = ca.issue(&files);
    let m = Arc::new(management::Management::open(&options(&TempDir::new("tls-data"))).unwrap());
    let (addr, _server) = serve_tls(m.clone(), files.clone()).await;

    // REST over HTTPS.
    let (status, groups) = https_get(addr, ca.roots(), "/api/groups").await;
    assert_eq!(status, 200, "{groups}");
    assert_eq!(groups[0]["name"], "All");

    // gRPC over TLS, as tonic clients (and NetBird's Go client) connect: h2 by ALPN.
    let (_, key) = call(
        &m,
        "POST",
        "/api/setup-keys",
        Some(serde_json::json!({"name": "k", "type": "reusable", "auto_groups": []})),
    )
    .await;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca.0.pem()))
        .domain_name("localhost");
    let channel = tonic::transport::Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("gRPC over TLS connects");
    let mut client = ManagementServiceClient::new(channel);
    let server = WgPublicKey::from_base64(
        &client
            .get_server_key(pb::Empty {})
            .await
            .unwrap()
            .into_inner()
            .key,
    )
    .unwrap();
    assert_eq!(server, m.key.public());
    let peer = WgKey::generate();
    let login = pb::LoginRequest {
        setup_key: key["key"].as_str().unwrap().into(),
        meta: Some(meta("tls-peer")),
        ..Default::default()
    };
    let answer = client
        .login(peer.seal_message(&server, &login))
        .await
        .expect("Login over TLS");
    let answer: pb::LoginResponse = peer.open_message(&server, answer.get_ref()).unwrap();
    assert!(answer.peer_config.unwrap().address.starts_with("100."));
    let (_, peers) = call(&m, "GET", "/api/peers", None).await;
    assert_eq!(
        peers[0]["connection_ip"], "127.0.0.1",
        "the Login's remote address, through TLS"
    );

    // A client that does not trust the CA, and one that speaks plain HTTP, get nothing.
    let other = Ca::new("someone else");
    let refused = handshake(addr, other.roots())
        .await
        .expect_err("an unknown CA is refused");
    assert!(
        refused.to_string().contains("UnknownIssuer")
            || refused.to_string().contains("certificate"),
        "{refused}"
    );
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /api/groups HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer))
        .await
        .expect("the server closes it");
    assert!(
        !String::from_utf8_lossy(&answer).contains("HTTP/1.1"),
        "no HTTP answer in the clear"
    );

    // A renewal is served without a restart.
    let (_, leaf) = handshake(addr, ca.roots()).await.unwrap();
    assert_eq!(leaf, first);
    let second = ca.issue(&files);
    let mut served = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        served = handshake(addr, ca.roots()).await.unwrap().1;
        if served == second {
            break;
        }
    }
    assert_eq!(served, second, "the renewed certificate within 5 s");
    // A broken renewal (a key that is not the certificate's) keeps the last good certificate.
    write(
        &files.key,
        KeyPair::generate().unwrap().serialize_pem().as_bytes(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(handshake(addr, ca.roots()).await.unwrap().1, second);

    // Handshakes are counted by result (the server counts a TLS 1.3 handshake after the client
    // finished it, so the last one may still be on its way).
    let metrics = management::metrics::render(&m);
    let count = |result: &str| {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "management_tls_handshakes_total{{result=\"{result}\"}} "
                ))
            })
            .map(|v| v.parse::<u64>().unwrap())
            .unwrap_or(0)
    };
    assert!(count("ok") >= 4 && count("failed") >= 2, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_is_not_the_certificates_stops_the_start() {
    let dir = TempDir::new("tls-mismatch");
    let ca = Ca::new("test CA");
    let files = TlsFiles::new(dir.0.join("cert.pem"), dir.0.join("key.pem"));
    ca.issue(&files);
    write(
        &files.key,
        KeyPair::generate().unwrap().serialize_pem().as_bytes(),
    );
    let err = management::tls::load(&files).expect_err("refused");
    assert!(format!("{err:#}").contains("is not the key of"), "{err:#}");
    let m = Arc::new(
        management::Management::open(&options(&TempDir::new("tls-mismatch-data"))).unwrap(),
    );
    let (_, server) = serve_tls(m, files).await;
    assert!(server.await.unwrap().is_err(), "serve refuses to start");
    std::fs::write(dir.0.join("empty.pem"), b"").unwrap();
    let empty = TlsFiles::new(dir.0.join("empty.pem"), dir.0.join("key.pem"));
    assert!(
        format!("{:#}", management::tls::load(&empty).err().unwrap())
            .contains("holds no certificate")
    );
}
