//! The real `gateway management serve`, started in a lab namespace.

use std::{
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::netns::Netns;

pub struct ManagementProcess {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl ManagementProcess {
    /// Starts the service in `ns` with state in `data_dir` and waits until it accepts connections.
    pub fn start(binary: &Path, ns: &Netns, data_dir: &Path, addr: SocketAddr, token: &str, extra: &[&str], log: &Path) -> anyhow::Result<ManagementProcess> {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).context("management log file")?;
        let child = ns
            .command(binary.to_str().context("binary path")?)
            .args(["management", "serve", "--data-dir", data_dir.to_str().context("data dir")?, "--listen", &addr.to_string(), "--api-token", token])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()
            .context("starting management")?;
        let mut p = ManagementProcess { child, addr, log: log.to_path_buf() };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = p.child.try_wait()? {
                bail!("management exited ({status}) during start:\n{}", p.log_text());
            }
            if ns.run(move || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())? {
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
