//! The gateway's WireGuard interface. One trait, [`Backend`], three implementations chosen per host:
//! - **kernel**: the kernel's WireGuard, created and configured over netlink; the interface and its
//!   sessions outlive the gateway process;
//! - **userspace**: boringtun in this process on a TUN device, configured over a private UAPI
//!   channel (see [`UserspaceBackend`] for why not the usual socket); it ends with the process;
//! - **external**: an interface someone else manages (wg-quick, wireguard-go, NetBird's `wt0`):
//!   read for status, never configured.
//!
//! [`Tunnel`] applies a peer list as a difference against what the interface has, so a peer that
//! stays keeps its session.

pub mod link;
pub mod peers;

use std::{path::Path, time::SystemTime};

use anyhow::{Context as _, anyhow, bail};
use defguard_wireguard_rs::{
    InterfaceConfiguration, Kernel, Userspace, WGApi, WireguardInterfaceApi, host::Host, key::Key,
    net::IpAddrMask,
};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

pub use peers::{PeerDiff, PeerError, PeerSet, PeerSpec, PeerState};

/// NetBird's defaults (client/iface): interface, MTU, port, keepalive.
pub const DEFAULT_INTERFACE: &str = "wt0";
pub const DEFAULT_MTU: u32 = 1280;
pub const MIN_MTU: u32 = 576;
pub const DEFAULT_LISTEN_PORT: u16 = 51820;
pub const DEFAULT_KEEPALIVE_SECS: u16 = 25;

/// Where userspace WireGuard implementations (boringtun, wireguard-go) put their UAPI sockets.
const UAPI_DIR: &str = "/var/run/wireguard";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// The kernel's WireGuard where the kernel has it, else userspace.
    #[default]
    Auto,
    Kernel,
    Userspace,
    External,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Kernel,
    Userspace,
    External,
}

impl BackendKind {
    pub fn label(self) -> &'static str {
        match self {
            BackendKind::Kernel => "kernel",
            BackendKind::Userspace => "userspace",
            BackendKind::External => "external",
        }
    }
}

/// The device the gateway wants.
#[derive(Clone, Debug)]
pub struct DeviceSpec {
    pub name: String,
    /// Base64. Unused by the external backend.
    pub private_key: String,
    pub listen_port: u16,
    pub mtu: u32,
}

/// One WireGuard implementation behind the gateway's interface.
pub trait Backend: Send {
    fn kind(&self) -> BackendKind;
    fn name(&self) -> &str;
    /// The device as it is now: key, port, peers with their counters.
    fn read(&self) -> anyhow::Result<Host>;
    /// Adds a peer or updates it in place (its session stays).
    fn set_peer(&self, peer: &defguard_wireguard_rs::peer::Peer) -> anyhow::Result<()>;
    fn remove_peer(&self, key: &Key) -> anyhow::Result<()>;
    /// Whether the gateway configures this device (peers, addresses); false for external.
    fn owns_config(&self) -> bool {
        true
    }
}

fn wg_err(e: defguard_wireguard_rs::error::WireguardInterfaceError) -> anyhow::Error {
    anyhow!("{e}")
}

fn interface_config(spec: &DeviceSpec) -> InterfaceConfiguration {
    InterfaceConfiguration {
        name: spec.name.clone(),
        prvkey: spec.private_key.clone(),
        addresses: vec![],
        port: spec.listen_port,
        peers: vec![],
        mtu: Some(spec.mtu),
        fwmark: None,
    }
}

struct KernelBackend {
    api: WGApi<Kernel>,
    name: String,
}

impl KernelBackend {
    /// Creates the interface, or adopts the one an earlier run left (its sessions go on). A
    /// different key or port on an adopted interface is replaced, which resets its peers.
    fn open(spec: &DeviceSpec) -> anyhow::Result<KernelBackend> {
        let mut api = WGApi::<Kernel>::new(spec.name.clone()).map_err(wg_err)?;
        let want_key =
            Key::try_from(spec.private_key.as_str()).map_err(|e| anyhow!("private key: {e}"))?;
        if link::exists(&spec.name) {
            let host = api.read_interface_data().map_err(wg_err).with_context(|| {
                format!(
                    "{} exists but is not a kernel WireGuard interface",
                    spec.name
                )
            })?;
            if host.private_key.as_ref() != Some(&want_key) || host.listen_port != spec.listen_port
            {
                warn!(interface = %spec.name, "the existing interface has another key or port: configuring it anew (its peers reconnect)");
                api.configure_interface(&interface_config(spec))
                    .map_err(wg_err)?;
            } else {
                info!(interface = %spec.name, peers = host.peers.len(), "adopted the kernel WireGuard interface of an earlier run; its sessions continue");
            }
        } else {
            api.create_interface()
                .map_err(wg_err)
                .with_context(|| format!("creating kernel WireGuard interface {}", spec.name))?;
            api.configure_interface(&interface_config(spec))
                .map_err(wg_err)?;
        }
        link::set_mtu(&spec.name, spec.mtu)?;
        link::set_up(&spec.name)?;
        Ok(KernelBackend {
            api,
            name: spec.name.clone(),
        })
    }
}

impl Backend for KernelBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Kernel
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn read(&self) -> anyhow::Result<Host> {
        self.api.read_interface_data().map_err(wg_err)
    }
    fn set_peer(&self, peer: &defguard_wireguard_rs::peer::Peer) -> anyhow::Result<()> {
        self.api.configure_peer(peer).map_err(wg_err)
    }
    fn remove_peer(&self, key: &Key) -> anyhow::Result<()> {
        self.api.remove_peer(key).map_err(wg_err)
    }
}

/// boringtun in this process. Its configuration channel is one end of a socket pair (the
/// UAPI text protocol, as `wg` speaks it), not the usual `/var/run/wireguard/<name>.sock`: with
/// that socket boringtun also takes SIGINT and SIGTERM through a signalfd, which races the
/// gateway for them and ends the device instead of the gateway. So `wg show` does not see this
/// device; `gateway status` shows what it would.
struct UserspaceBackend {
    api: std::sync::Mutex<std::os::unix::net::UnixStream>,
    /// Owns the device: dropping it (with the stream's end above) stops it and removes the TUN.
    _handle: defguard_boringtun::device::DeviceHandle,
    name: String,
}

impl UserspaceBackend {
    fn open(spec: &DeviceSpec) -> anyhow::Result<UserspaceBackend> {
        use std::os::fd::IntoRawFd as _;
        if link::exists(&spec.name) {
            bail!(
                "interface {} exists already; an in-process userspace device needs a new one \
                 (to filter a WireGuard interface that something else runs, use backend: external)",
                spec.name
            );
        }
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().context("UAPI socket pair")?;
        let config = defguard_boringtun::device::DeviceConfig {
            uapi_fd: theirs.into_raw_fd(),
            ..Default::default()
        };
        let handle = defguard_boringtun::device::DeviceHandle::new(&spec.name, config)
            .map_err(|e| anyhow!("{e:?}"))
            .with_context(|| {
                format!(
                    "creating userspace WireGuard device {} (boringtun on a TUN)",
                    spec.name
                )
            })?;
        ours.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        let b = UserspaceBackend {
            api: std::sync::Mutex::new(ours),
            _handle: handle,
            name: spec.name.clone(),
        };
        let key =
            Key::try_from(spec.private_key.as_str()).map_err(|e| anyhow!("private key: {e}"))?;
        b.uapi(&format!(
            "set=1\nprivate_key={}\nlisten_port={}\nreplace_peers=true\n\n",
            key.to_lower_hex(),
            spec.listen_port
        ))
        .with_context(|| format!("configuring {}", spec.name))?;
        link::set_mtu(&spec.name, spec.mtu)?;
        link::set_up(&spec.name)?;
        Ok(b)
    }

    /// One UAPI exchange: the request, then the answer up to its `errno=` line (an error unless
    /// 0). Returns the answer's text.
    fn uapi(&self, request: &str) -> anyhow::Result<String> {
        use std::io::{BufRead as _, Write as _};
        let mut stream = self.api.lock().unwrap_or_else(|p| p.into_inner());
        stream.write_all(request.as_bytes()).context("UAPI write")?;
        let mut reader = std::io::BufReader::new(&*stream);
        let mut answer = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).context("UAPI read")? == 0 {
                bail!("the userspace device closed its configuration channel");
            }
            answer.push_str(&line);
            if let Some(errno) = line.trim().strip_prefix("errno=") {
                // The blank line that ends the answer.
                let mut blank = String::new();
                let _ = reader.read_line(&mut blank);
                return match errno {
                    "0" => Ok(answer),
                    e => Err(anyhow!(
                        "the userspace device refused the change (errno {e})"
                    )),
                };
            }
        }
    }
}

impl Backend for UserspaceBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Userspace
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn read(&self) -> anyhow::Result<Host> {
        let answer = self.uapi("get=1\n\n")?;
        Host::parse_uapi(std::io::Cursor::new(answer)).context("parsing the device's state")
    }
    fn set_peer(&self, peer: &defguard_wireguard_rs::peer::Peer) -> anyhow::Result<()> {
        self.uapi(&format!("set=1\n{}\n", peer.as_uapi_update()))
            .map(|_| ())
    }
    fn remove_peer(&self, key: &Key) -> anyhow::Result<()> {
        self.uapi(&format!(
            "set=1\npublic_key={}\nremove=true\n\n",
            key.to_lower_hex()
        ))
        .map(|_| ())
    }
}

/// Someone else's interface: kernel (netlink) or a userspace implementation (its UAPI socket).
struct ExternalBackend {
    name: String,
    uapi: bool,
}

impl ExternalBackend {
    fn open(name: &str) -> anyhow::Result<ExternalBackend> {
        if !link::exists(name) {
            bail!(
                "interface {name} does not exist: backend external attaches to a WireGuard interface that something else runs"
            );
        }
        let uapi = Path::new(UAPI_DIR).join(format!("{name}.sock")).exists();
        let b = ExternalBackend {
            name: name.to_string(),
            uapi,
        };
        b.read().with_context(|| format!("{name} is not a WireGuard interface the gateway can read (no UAPI socket in {UAPI_DIR}, no kernel WireGuard)"))?;
        Ok(b)
    }
}

impl Backend for ExternalBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::External
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn read(&self) -> anyhow::Result<Host> {
        if self.uapi {
            WGApi::<Userspace>::new(self.name.clone())
                .map_err(wg_err)?
                .read_interface_data()
                .map_err(wg_err)
        } else {
            WGApi::<Kernel>::new(self.name.clone())
                .map_err(wg_err)?
                .read_interface_data()
                .map_err(wg_err)
        }
    }
    fn set_peer(&self, _: &defguard_wireguard_rs::peer::Peer) -> anyhow::Result<()> {
        bail!(
            "{} is managed by something else (backend external)",
            self.name
        )
    }
    fn remove_peer(&self, _: &Key) -> anyhow::Result<()> {
        bail!(
            "{} is managed by something else (backend external)",
            self.name
        )
    }
    fn owns_config(&self) -> bool {
        false
    }
}

/// What `gateway status` shows of the interface.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TunnelReport {
    pub backend: BackendKind,
    /// Why this backend (what `auto` found).
    pub chosen: String,
    pub interface: String,
    pub public_key: Option<String>,
    pub listen_port: u16,
    pub mtu: Option<u32>,
    pub addresses: Vec<IpNet>,
    pub peers: Vec<PeerState>,
}

/// The gateway's WireGuard interface.
pub struct Tunnel {
    backend: Box<dyn Backend>,
    chosen: String,
}

impl Tunnel {
    /// Opens the device with the chosen backend; `auto` tries the kernel first.
    pub fn open(choice: BackendChoice, spec: &DeviceSpec) -> anyhow::Result<Tunnel> {
        if spec.mtu < MIN_MTU {
            bail!("MTU {} is below {MIN_MTU}", spec.mtu);
        }
        let (backend, chosen): (Box<dyn Backend>, String) = match choice {
            BackendChoice::Kernel => (
                Box::new(KernelBackend::open(spec)?),
                "configured: kernel".into(),
            ),
            BackendChoice::Userspace => (
                Box::new(UserspaceBackend::open(spec)?),
                "configured: userspace".into(),
            ),
            BackendChoice::External => (
                Box::new(ExternalBackend::open(&spec.name)?),
                "configured: external".into(),
            ),
            BackendChoice::Auto => match KernelBackend::open(spec) {
                Ok(k) => (Box::new(k), "auto: the kernel has WireGuard".into()),
                Err(e) => {
                    let why = format!("{e:#}");
                    info!(interface = %spec.name, "no kernel WireGuard here ({why}); running the userspace device (boringtun)");
                    (
                        Box::new(UserspaceBackend::open(spec)?),
                        format!("auto: no kernel WireGuard ({why})"),
                    )
                }
            },
        };
        Ok(Tunnel { backend, chosen })
    }

    pub fn kind(&self) -> BackendKind {
        self.backend.kind()
    }

    pub fn name(&self) -> &str {
        self.backend.name()
    }

    pub fn owns_config(&self) -> bool {
        self.backend.owns_config()
    }

    /// Whether the interface outlives this process (kernel and external do).
    pub fn outlives_process(&self) -> bool {
        self.backend.kind() != BackendKind::Userspace
    }

    /// Applies `desired` as a difference to the interface's peers. The list was checked whole
    /// ([`PeerSet::check`]); an error part-way leaves the interface between the two sets, and
    /// the next apply starts from what the interface then has.
    pub fn apply_peers(&self, desired: &PeerSet) -> anyhow::Result<PeerDiff> {
        if !self.owns_config() {
            bail!(
                "{} is managed by something else: its peers are not the gateway's to set",
                self.name()
            );
        }
        let host = self.backend.read()?;
        let current = peers::current_specs(&host.peers.values().cloned().collect::<Vec<_>>());
        let diff = peers::diff(&current, desired);
        for key in &diff.remove {
            let k = Key::try_from(key.as_str()).map_err(|e| anyhow!("{e}"))?;
            self.backend
                .remove_peer(&k)
                .with_context(|| format!("removing peer {key}"))?;
        }
        for spec in &diff.set {
            self.backend
                .set_peer(&peers::to_peer(spec)?)
                .with_context(|| format!("setting peer {}", spec.public_key))?;
        }
        Ok(diff)
    }

    /// Gives the interface exactly these addresses. The old ones go first: deleting a primary
    /// address takes the secondaries of its subnet with it, and a new address in the old one's
    /// subnet would be such a secondary.
    pub fn set_addresses(&self, wanted: &[IpNet]) -> anyhow::Result<()> {
        if !self.owns_config() {
            bail!(
                "{} is managed by something else: its addresses are not the gateway's to set",
                self.name()
            );
        }
        let name = self.name().to_string();
        let have = link::addresses(&name)?;
        for net in have.iter().filter(|n| !wanted.contains(n)) {
            link::delete_address(&name, *net)?;
        }
        for net in wanted.iter().filter(|n| !have.contains(n)) {
            let mask = IpAddrMask::new(net.addr(), net.prefix_len());
            WGApi::<Kernel>::new(name.clone())
                .map_err(wg_err)?
                .assign_address(&mask)
                .map_err(wg_err)
                .with_context(|| format!("adding {net} to {name}"))?;
        }
        Ok(())
    }

    pub fn public_key(&self) -> anyhow::Result<Option<String>> {
        Ok(self
            .backend
            .read()?
            .private_key
            .map(|k| k.public_key().to_string()))
    }

    pub fn report(&self) -> anyhow::Result<TunnelReport> {
        let host = self.backend.read()?;
        let now = SystemTime::now();
        let mut peers: Vec<PeerState> = host.peers.values().map(|p| peers::state(p, now)).collect();
        peers.sort_by(|a, b| a.public_key.cmp(&b.public_key));
        Ok(TunnelReport {
            backend: self.kind(),
            chosen: self.chosen.clone(),
            interface: self.name().to_string(),
            public_key: host.private_key.map(|k| k.public_key().to_string()),
            listen_port: host.listen_port,
            mtu: link::mtu(self.name()).ok(),
            addresses: link::addresses(self.name()).unwrap_or_default(),
            peers,
        })
    }
}

/// The public key of a base64 private key (what `gateway wireguard public-key` prints).
pub fn public_key_of(private_b64: &str) -> anyhow::Result<String> {
    let k = Key::try_from(private_b64.trim()).map_err(|e| anyhow!("private key: {e}"))?;
    Ok(k.public_key().to_string())
}
