//! Real WireGuard peers for labs: Debian's `wireguard-go` (an implementation this project did not
//! write) configured with `wg`, inside a lab namespace. The process is killed and its UAPI socket
//! removed when the peer drops.

use std::{
    io::Write as _,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::netns::{Netns, exec_in};

/// A wireguard-go device in a namespace.
pub struct WgPeer {
    pub ns_name: String,
    pub interface: String,
    pub public_key: String,
    /// Base64; a lab peer logs in to management with it, as a NetBird client does.
    pub private_key: String,
    child: Child,
}

/// A new private key and its public key, from `wg genkey` / `wg pubkey`.
pub fn keypair() -> anyhow::Result<(String, String)> {
    let private = Command::new("wg")
        .arg("genkey")
        .output()
        .context("wg genkey (apt install wireguard-tools)")?;
    let private = String::from_utf8(private.stdout)?.trim().to_string();
    Ok((private.clone(), public_key(&private)?))
}

pub fn public_key(private: &str) -> anyhow::Result<String> {
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("wg pubkey")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(format!("{private}\n").as_bytes())?;
    let out = child.wait_with_output()?;
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

impl WgPeer {
    /// Starts wireguard-go on `interface` in `ns` with a new key and `address` (with prefix), up.
    pub fn start(ns: &Netns, interface: &str, address: &str, mtu: u32) -> anyhow::Result<WgPeer> {
        let (private, _) = keypair()?;
        Self::start_with_key(ns, interface, address, mtu, &private)
    }

    /// As [`WgPeer::start`] with a given private key (base64).
    pub fn start_with_key(
        ns: &Netns,
        interface: &str,
        address: &str,
        mtu: u32,
        private: &str,
    ) -> anyhow::Result<WgPeer> {
        let (private, public_key) = (private.to_string(), public_key(private)?);
        let child = ns
            .command("wireguard-go")
            .args(["-f", interface])
            // Older releases refuse to run on Linux (where a kernel module would do) without it.
            .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting wireguard-go (apt install wireguard-go)")?;
        let peer = WgPeer {
            ns_name: ns.name.clone(),
            interface: interface.to_string(),
            public_key,
            private_key: private.clone(),
            child,
        };
        let wait = crate::harness::deadline(Duration::from_secs(10));
        let deadline = Instant::now() + wait;
        while !std::path::Path::new(&format!("/var/run/wireguard/{interface}.sock")).exists() {
            if Instant::now() > deadline {
                bail!("wireguard-go did not create {interface} in {wait:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let key_file = std::env::temp_dir().join(format!("{interface}-{}.key", std::process::id()));
        std::fs::write(&key_file, format!("{private}\n"))?;
        let set = ns.exec(&[
            "wg",
            "set",
            interface,
            "private-key",
            key_file.to_str().context("path")?,
        ]);
        let _ = std::fs::remove_file(&key_file);
        set?;
        ns.ip(&["addr", "add", address, "dev", interface])?;
        ns.ip(&["link", "set", interface, "mtu", &mtu.to_string(), "up"])?;
        Ok(peer)
    }

    /// `wg set IF peer KEY endpoint E allowed-ips A persistent-keepalive K`.
    pub fn add_peer(
        &self,
        public_key: &str,
        endpoint: Option<&str>,
        allowed_ips: &str,
        keepalive: u16,
    ) -> anyhow::Result<()> {
        let keepalive = keepalive.to_string();
        let mut args = vec![
            "wg",
            "set",
            &self.interface,
            "peer",
            public_key,
            "allowed-ips",
            allowed_ips,
            "persistent-keepalive",
            &keepalive,
        ];
        if let Some(e) = endpoint {
            args.extend(["endpoint", e]);
        }
        exec_in(&self.ns_name, &args).map(|_| ())
    }

    /// `wg set IF listen-port PORT`.
    pub fn set_listen_port(&self, port: u16) -> anyhow::Result<()> {
        exec_in(
            &self.ns_name,
            &[
                "wg",
                "set",
                &self.interface,
                "listen-port",
                &port.to_string(),
            ],
        )
        .map(|_| ())
    }

    /// `wg set IF peer KEY remove`: the next packet starts a new handshake.
    pub fn remove_peer(&self, public_key: &str) -> anyhow::Result<()> {
        exec_in(
            &self.ns_name,
            &["wg", "set", &self.interface, "peer", public_key, "remove"],
        )
        .map(|_| ())
    }

    /// Seconds since the last handshake with `public_key`; `None`: never.
    pub fn handshake_age(&self, public_key: &str) -> anyhow::Result<Option<u64>> {
        let text = String::from_utf8(
            exec_in(
                &self.ns_name,
                &["wg", "show", &self.interface, "latest-handshakes"],
            )?
            .stdout,
        )?;
        for line in text.lines() {
            let mut f = line.split_whitespace();
            if f.next() == Some(public_key) {
                let t: u64 = f.next().context("timestamp")?.parse()?;
                if t == 0 {
                    return Ok(None);
                }
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_secs();
                return Ok(Some(now.saturating_sub(t)));
            }
        }
        bail!("{} has no peer {public_key}", self.interface)
    }

    /// (received, sent) bytes with `public_key`.
    pub fn transfer(&self, public_key: &str) -> anyhow::Result<(u64, u64)> {
        let text = String::from_utf8(
            exec_in(&self.ns_name, &["wg", "show", &self.interface, "transfer"])?.stdout,
        )?;
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == 3 && f[0] == public_key {
                return Ok((f[1].parse()?, f[2].parse()?));
            }
        }
        bail!("{} has no peer {public_key}", self.interface)
    }
}

impl Drop for WgPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.interface));
    }
}

/// Waits until `check` holds, polling every 50 ms, for at most `timeout` (stretched by
/// [`crate::harness::SLOWDOWN_ENV`]).
pub fn wait_for(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + crate::harness::deadline(timeout);
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}

/// The WireGuard lab: peers, each in its own namespace with its own underlay link to the
/// gateway, running wireguard-go; the gateway terminating their tunnels on its own interface;
/// a LAN host that has no route to the overlay (only masqueraded traffic can be answered).
///
/// ```text
///  p1: eth0 198.18.1.2 ── u1 198.18.1.1 ┐
///      wg 100.64.0.2/10                 │ gw: WireGuard 100.64.0.1/10 (:51820)   lan0 198.18.10.1/24
///  p2: eth0 198.18.2.2 ── u2 198.18.2.1 ┘ ──────────────────────────────────── lan: 198.18.10.10/24
/// ```
pub struct WgLab {
    /// Dropped first: the wireguard-go processes end before their namespaces go.
    pub peers: Vec<WgHost>,
    pub lan: Netns,
    pub gw: Netns,
    pub dir: std::path::PathBuf,
    pub bpffs: std::path::PathBuf,
    /// The gateway's WireGuard interface name (unique: UAPI sockets live in one host folder).
    pub gw_interface: String,
}

pub struct WgHost {
    pub name: String,
    pub peer: WgPeer,
    pub ns: Netns,
    pub overlay: std::net::Ipv4Addr,
    /// The gateway's underlay address on this peer's link: the peer's WireGuard endpoint.
    pub gw_underlay: std::net::Ipv4Addr,
}

pub const WG_LAN_HOST: &str = "198.18.10.10";
pub const WG_GW_LAN: &str = "198.18.10.1";
pub const WG_GW_OVERLAY: &str = "100.64.0.1";
pub const WG_PORT: u16 = 51820;

static WG_LAB_COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl WgLab {
    /// A lab with `n` peers (at most 9) named p1, p2, ..., overlay addresses 100.64.0.2, .3, ...
    pub fn new(n: u8) -> anyhow::Result<WgLab> {
        let hosts: Vec<(String, String)> = (1..=n)
            .map(|i| (format!("p{i}"), format!("100.64.0.{}", i + 1)))
            .collect();
        let refs: Vec<(&str, &str)> = hosts
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        Self::with_hosts(&refs)
    }

    /// A lab with these peers: (name, overlay address), at most 9.
    pub fn with_hosts(hosts: &[(&str, &str)]) -> anyhow::Result<WgLab> {
        use crate::netns::{remove_stale, veth};
        anyhow::ensure!(hosts.len() <= 9, "at most 9 peers");
        remove_stale("gwwg");
        let pid = std::process::id() % 10_000_000;
        let seq = WG_LAB_COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let id = format!("gwwg{pid}x{seq}");
        let dir = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&dir)?;
        let gw = Netns::create(&format!("{id}-gw"))?;
        let lan = Netns::create(&format!("{id}-lan"))?;
        let bpffs = dir.join("bpffs");
        gateway_dataplane::pins::mount_bpffs(&bpffs)?;
        let mut lab = WgLab {
            peers: Vec::new(),
            lan,
            gw,
            dir,
            bpffs,
            gw_interface: format!("wg{pid}g{seq}"),
        };
        lab.gw.sysctl("net.ipv4.ip_forward", "1")?;
        veth(&lab.gw, "lan0", &lab.lan, "eth0")?;
        lab.gw
            .ip(&["addr", "add", &format!("{WG_GW_LAN}/24"), "dev", "lan0"])?;
        lab.lan
            .ip(&["addr", "add", &format!("{WG_LAN_HOST}/24"), "dev", "eth0"])?;
        for (i, (name, overlay)) in hosts.iter().enumerate() {
            let i = i + 1;
            let ns = Netns::create(&format!("{id}-{name}"))?;
            let gw_if = format!("u{i}");
            veth(&lab.gw, &gw_if, &ns, "eth0")?;
            lab.gw
                .ip(&["addr", "add", &format!("198.18.{i}.1/24"), "dev", &gw_if])?;
            ns.ip(&["addr", "add", &format!("198.18.{i}.2/24"), "dev", "eth0"])?;
            let overlay: std::net::Ipv4Addr = overlay.parse()?;
            let peer = WgPeer::start(
                &ns,
                &format!("wg{pid}p{seq}y{i}"),
                &format!("{overlay}/10"),
                1280,
            )?;
            ns.ip(&["route", "add", "198.18.10.0/24", "dev", &peer.interface])?;
            lab.peers.push(WgHost {
                name: name.to_string(),
                peer,
                ns,
                overlay,
                gw_underlay: format!("198.18.{i}.1").parse()?,
            });
        }
        Ok(lab)
    }

    pub fn host(&self, name: &str) -> &WgHost {
        self.peers
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no lab peer {name}"))
    }

    /// Points every peer at the gateway's key and endpoint; the overlay and the LAN go through it.
    pub fn connect_peers(&self, gateway_public_key: &str) -> anyhow::Result<()> {
        for h in &self.peers {
            h.peer.add_peer(
                gateway_public_key,
                Some(&format!("{}:{WG_PORT}", h.gw_underlay)),
                "100.64.0.0/10,198.18.10.0/24",
                25,
            )?;
        }
        Ok(())
    }

    pub fn state_dir(&self) -> std::path::PathBuf {
        self.dir.join("state")
    }

    pub fn pin_dir(&self) -> std::path::PathBuf {
        self.bpffs.join("gateway")
    }
}

impl Drop for WgLab {
    fn drop(&mut self) {
        gateway_dataplane::pins::unmount_bpffs(&self.bpffs);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
