//! The real `gateway run`, started inside the lab's gateway namespace.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::netns::Netns;

/// Where the lab gateway serves metrics, inside its own namespace.
pub const LAB_METRICS_ADDR: &str = "127.0.0.1:9464";

pub struct GatewayProcess {
    child: Child,
    ns_name: String,
    log: std::path::PathBuf,
}

impl GatewayProcess {
    /// Starts `binary run --config CONFIG` in `ns` and waits until it serves /status.
    pub fn start(
        binary: &Path,
        ns: &Netns,
        config: &Path,
        log: &Path,
    ) -> anyhow::Result<GatewayProcess> {
        Self::start_with(binary, ns, config, log, &[])
    }

    /// As [`GatewayProcess::start`], with more arguments for `run` (e.g. `--management-url`).
    pub fn start_with(
        binary: &Path,
        ns: &Netns,
        config: &Path,
        log: &Path,
        extra: &[&str],
    ) -> anyhow::Result<GatewayProcess> {
        let out = std::fs::File::create(log).context("gateway log file")?;
        let child = ns
            .command(binary.to_str().context("binary path")?)
            .args(["run", "--config", config.to_str().context("config path")?])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()
            .context("starting gateway")?;
        let mut p = GatewayProcess {
            child,
            ns_name: ns.name.clone(),
            log: log.to_path_buf(),
        };
        let wait = crate::harness::deadline(Duration::from_secs(30));
        let deadline = Instant::now() + wait;
        loop {
            if let Some(status) = p.child.try_wait()? {
                bail!("gateway exited ({status}) during start:\n{}", p.log_text());
            }
            if p.status::<serde_json::Value>(ns).is_ok() {
                return Ok(p);
            }
            if Instant::now() > deadline {
                bail!("gateway did not come up in {wait:?}:\n{}", p.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The gateway's /status, parsed as `T` (the agent's `status::Report`).
    pub fn status<T: serde::de::DeserializeOwned>(&self, ns: &Netns) -> anyhow::Result<T> {
        let addr = LAB_METRICS_ADDR.parse()?;
        let body = ns.run(move || http_get(addr, "/status"))??;
        Ok(serde_json::from_str(&body)?)
    }

    pub fn metrics(&self, ns: &Netns) -> anyhow::Result<String> {
        let addr = LAB_METRICS_ADDR.parse()?;
        ns.run(move || http_get(addr, "/metrics"))?
    }

    fn signal(&self, sig: i32) -> anyhow::Result<()> {
        // `ip netns exec` execs the gateway in place, so the child's pid is the gateway's.
        // SAFETY: plain kill(2).
        if unsafe { libc::kill(self.child.id() as i32, sig) } != 0 {
            bail!("kill: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// SIGHUP, then waits until the reload shows in /status (a new generation or a rejection).
    pub fn reload<T: serde::de::DeserializeOwned>(&self, ns: &Netns) -> anyhow::Result<T> {
        let before: serde_json::Value = self.status(ns)?;
        self.signal(libc::SIGHUP)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now: serde_json::Value = self.status(ns)?;
            if now["last_reload"] != before["last_reload"] {
                return Ok(serde_json::from_value(now)?);
            }
            if Instant::now() > deadline {
                bail!("reload did not show in /status within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `timeout` for the gateway to exit by itself.
    pub fn wait_exit(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(Some(s));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash or the OOM killer would end it, and wait.
    pub fn crash(mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.signal(libc::SIGKILL)?;
        Ok(self.child.wait()?)
    }

    /// SIGTERM and wait: the gateway exits 0 (a pinned data plane stays in force).
    pub fn stop(mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.signal(libc::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!(
                    "gateway did not exit within 10 s of SIGTERM ({})",
                    self.ns_name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.signal(libc::SIGTERM);
            std::thread::sleep(Duration::from_millis(300));
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `gateway detach --pin-dir PIN_DIR` in `ns` (where the gateway ran: a cls_bpf filter is
/// found by its interface's name) and returns its standard output; an error if it failed.
pub fn detach(binary: &Path, ns: &Netns, pin_dir: &Path) -> anyhow::Result<String> {
    let out = ns
        .command(binary.to_str().context("binary path")?)
        .args(["detach", "--pin-dir"])
        .arg(pin_dir)
        .output()
        .context("running gateway detach")?;
    if !out.status.success() {
        bail!(
            "gateway detach failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A plain HTTP GET against a gateway's own endpoint on loopback (/status, /metrics).
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).with_context(|| {
        format!("connecting to {addr} (is `gateway run` serving metrics there?)")
    })?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{addr}{path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}
