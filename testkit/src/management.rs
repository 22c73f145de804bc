//! The real `gateway management serve`, started in a lab namespace, and the clients a test
//! drives it with: REST calls as an operator makes them, gRPC Login as a peer makes it.

use std::{
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use management_proto::{
    WgKey, WgPublicKey,
    pb::{self, management_service_client::ManagementServiceClient},
};
use serde_json::Value;

use crate::netns::Netns;

pub struct ManagementProcess {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl ManagementProcess {
    /// Starts the service in `ns` with state in `data_dir` and waits until it accepts connections.
    pub fn start(
        binary: &Path,
        ns: &Netns,
        data_dir: &Path,
        addr: SocketAddr,
        token: &str,
        extra: &[&str],
        log: &Path,
    ) -> anyhow::Result<ManagementProcess> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .context("management log file")?;
        let child = ns
            .command(binary.to_str().context("binary path")?)
            .args([
                "management",
                "serve",
                "--data-dir",
                data_dir.to_str().context("data dir")?,
                "--listen",
                &addr.to_string(),
                "--api-token",
                token,
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()
            .context("starting management")?;
        let mut p = ManagementProcess {
            child,
            addr,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = p.child.try_wait()? {
                bail!(
                    "management exited ({status}) during start:\n{}",
                    p.log_text()
                );
            }
            if ns.run(move || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })? {
                return Ok(p);
            }
            if Instant::now() > deadline {
                bail!("management did not come up in 20 s:\n{}", p.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The service's pid (`ip netns exec` execs it in place).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: the service dies without any goodbye, as in a crash.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ManagementProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// REST calls made from inside the namespace the service listens in.
pub struct Api<'a> {
    pub ns: &'a Netns,
    /// host:port the calls go to.
    pub addr: &'a str,
    pub token: &'a str,
}

impl Api<'_> {
    pub fn call(&self, method: &'static str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("http://{}{path}", self.addr);
        let auth = format!("Token {}", self.token);
        self.ns
            .run(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(5)))
                    .build()
                    .into();
                let resp = match (method, body) {
                    ("GET", _) => agent.get(&url).header("Authorization", &auth).call(),
                    ("DELETE", _) => agent.delete(&url).header("Authorization", &auth).call(),
                    ("POST", Some(b)) => agent
                        .post(&url)
                        .header("Authorization", &auth)
                        .send_json(&b),
                    ("PUT", Some(b)) => {
                        agent.put(&url).header("Authorization", &auth).send_json(&b)
                    }
                    _ => panic!("unsupported call {method}"),
                };
                let mut resp = resp.expect("management answers");
                let status = resp.status().as_u16();
                (
                    status,
                    resp.body_mut().read_json::<Value>().unwrap_or(Value::Null),
                )
            })
            .expect("namespace thread")
    }

    /// A call that must answer 200; its JSON.
    pub fn ok(&self, method: &'static str, path: &str, body: Value) -> Value {
        let (status, json) =
            self.call(method, path, if body.is_null() { None } else { Some(body) });
        assert_eq!(status, 200, "{method} {path}: {json}");
        json
    }

    /// POST that creates something; its id.
    pub fn id(&self, path: &str, body: Value) -> String {
        self.ok("POST", path, body)["id"]
            .as_str()
            .expect("id")
            .to_string()
    }

    pub fn peers(&self) -> Vec<Value> {
        self.ok("GET", "/api/peers", Value::Null)
            .as_array()
            .expect("peer list")
            .clone()
    }

    pub fn set_ip(&self, id: &str, ip: &str) {
        let body = serde_json::json!({"name": id, "ssh_enabled": false, "login_expiration_enabled": false, "inactivity_expiration_enabled": false, "ip": ip});
        self.ok("PUT", &format!("/api/peers/{id}"), body);
    }
}

/// Logs a peer in over gRPC with `setup_key` and its WireGuard `key`, from inside `ns`, as a
/// NetBird client does at enrolment.
pub fn grpc_login(
    ns: &Netns,
    url: &str,
    setup_key: &str,
    key: WgKey,
    hostname: &str,
) -> Result<pb::LoginResponse, tonic::Status> {
    grpc_login_with(ns, url, setup_key, key, hostname, &[])
}

/// As [`grpc_login`], announcing `capabilities` (IPv6 overlay, source prefixes) in the meta.
pub fn grpc_login_with(
    ns: &Netns,
    url: &str,
    setup_key: &str,
    key: WgKey,
    hostname: &str,
    capabilities: &[pb::PeerCapability],
) -> Result<pb::LoginResponse, tonic::Status> {
    let (url, setup_key, hostname) = (url.to_string(), setup_key.to_string(), hostname.to_string());
    let capabilities: Vec<i32> = capabilities.iter().map(|c| *c as i32).collect();
    ns.run(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async move {
                let mut client = ManagementServiceClient::connect(url)
                    .await
                    .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                let server = WgPublicKey::from_base64(
                    &client.get_server_key(pb::Empty {}).await?.into_inner().key,
                )
                .expect("server key");
                let meta = pb::PeerSystemMeta {
                    hostname,
                    go_os: "linux".into(),
                    capabilities,
                    ..Default::default()
                };
                let peer_keys = pb::PeerKeys {
                    ssh_pub_key: vec![],
                    wg_pub_key: key.public().to_base64().into_bytes(),
                };
                let sealed = key.seal_message(
                    &server,
                    &pb::LoginRequest {
                        setup_key,
                        meta: Some(meta),
                        peer_keys: Some(peer_keys),
                        ..Default::default()
                    },
                );
                let resp = client.login(sealed).await?.into_inner();
                Ok(key.open_message(&server, &resp).expect("the answer opens"))
            })
    })
    .expect("namespace thread")
}
