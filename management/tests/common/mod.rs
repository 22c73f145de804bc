//! Shared by the REST and gRPC tests: a management service on a temporary directory, REST calls
//! through its router, and peers that speak the real gRPC protocol over loopback.
#![allow(dead_code)]

use std::{path::PathBuf, sync::Arc, time::Duration};

use axum::{body::Body, http::Request};
use management::{Management, Options};
use management_proto::{
    WgKey, WgPublicKey,
    pb::{self, management_service_client::ManagementServiceClient},
};
use serde_json::Value;
use tonic::transport::Channel;
use tower::ServiceExt;

pub const TOKEN: &str = "test-token-0123456789";

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n: u64 = rand_suffix();
        let p = std::env::temp_dir().join(format!("mgmt-test-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn options(dir: &TempDir) -> Options {
    let mut o = Options::new(&dir.0);
    o.api_token = Some(TOKEN.into());
    o
}

pub fn open(dir: &TempDir) -> Arc<Management> {
    Arc::new(Management::open(&options(dir)).unwrap())
}

/// One REST call through the router; returns status and JSON body.
pub async fn call(
    m: &Arc<Management>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    call_raw(
        m,
        method,
        path,
        Some(&format!("Token {TOKEN}")),
        body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
    )
    .await
}

pub async fn call_raw(
    m: &Arc<Management>,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Vec<u8>,
) -> (u16, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = management::app(m.clone())
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20)
        .await
        .unwrap();
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (status, json)
}

pub async fn ok(m: &Arc<Management>, method: &str, path: &str, body: Value) -> Value {
    let (status, json) = call(m, method, path, Some(body)).await;
    assert_eq!(status, 200, "{method} {path}: {json}");
    json
}

/// Serves `m` on a loopback port; returns its URL.
pub async fn serve(m: Arc<Management>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        management::serve(m, listener, None, std::future::pending())
            .await
            .unwrap();
    });
    (url, task)
}

/// A peer speaking the real protocol: its own WireGuard key, sealed Login and Sync.
pub struct TestPeer {
    pub key: WgKey,
    pub client: ManagementServiceClient<Channel>,
    pub server: WgPublicKey,
}

pub fn meta(host: &str) -> pb::PeerSystemMeta {
    pb::PeerSystemMeta {
        hostname: host.into(),
        go_os: "linux".into(),
        ..Default::default()
    }
}

impl TestPeer {
    pub async fn connect(url: &str) -> TestPeer {
        Self::connect_with_key(url, WgKey::generate()).await
    }

    pub async fn connect_with_key(url: &str, key: WgKey) -> TestPeer {
        let mut client = ManagementServiceClient::connect(url.to_string())
            .await
            .unwrap()
            .max_decoding_message_size(management_proto::MAX_MESSAGE_SIZE);
        let server = WgPublicKey::from_base64(
            &client
                .get_server_key(pb::Empty {})
                .await
                .unwrap()
                .get_ref()
                .key,
        )
        .unwrap();
        TestPeer {
            key,
            client,
            server,
        }
    }

    pub async fn login(&mut self, setup_key: &str) -> Result<pb::LoginResponse, tonic::Status> {
        let req = pb::LoginRequest {
            setup_key: setup_key.into(),
            meta: Some(meta("test-peer")),
            ..Default::default()
        };
        let sealed = self.key.seal_message(&self.server, &req);
        let resp = self.client.login(sealed).await?.into_inner();
        Ok(self
            .key
            .open_message(&self.server, &resp)
            .expect("login response opens"))
    }

    pub async fn sync(&mut self) -> Result<tonic::Streaming<pb::EncryptedMessage>, tonic::Status> {
        let sealed = self.key.seal_message(
            &self.server,
            &pb::SyncRequest {
                meta: Some(meta("test-peer")),
            },
        );
        Ok(self.client.sync(sealed).await?.into_inner())
    }

    /// The next network map on the stream, within `wait`.
    pub async fn next_map(
        &self,
        stream: &mut tonic::Streaming<pb::EncryptedMessage>,
        wait: Duration,
    ) -> Result<pb::NetworkMap, String> {
        let msg = tokio::time::timeout(wait, stream.message())
            .await
            .map_err(|_| format!("no map within {wait:?}"))?;
        let msg = msg
            .map_err(|s| format!("stream error: {s}"))?
            .ok_or("stream ended")?;
        let resp: pb::SyncResponse = self
            .key
            .open_message(&self.server, &msg)
            .map_err(|e| e.to_string())?;
        resp.network_map
            .ok_or_else(|| "message without a map".to_string())
    }
}

/// One request over real HTTP/1.1 to a served instance, as an API client sends it (Bearer token,
/// JSON body); returns status and JSON body.
pub async fn http(url: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8(response).unwrap();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let payload = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (
        status,
        if payload.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&payload).unwrap()
        },
    )
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
}
