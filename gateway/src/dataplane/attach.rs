//! Attaching programs to interfaces, and detaching them again.

use anyhow::{Context as _, anyhow, bail};
use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpMode, tc::SchedClassifierLinkId, xdp::XdpLinkId};
use gateway_common::maps as names;

use super::Dataplane;
use crate::config::LanAttach;

/// Whether an interface carries Ethernet frames or bare IP packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    Ethernet,
    L3,
}

enum LinkId {
    Xdp(XdpLinkId),
    Tc(&'static str, SchedClassifierLinkId),
}

pub struct Attachment {
    pub interface: String,
    pub program: &'static str,
    /// "xdp native", "xdp skb", "tc ingress", "tc egress".
    pub mode: String,
    link: Option<LinkId>,
}

pub fn if_index(name: &str) -> anyhow::Result<u32> {
    let c = std::ffi::CString::new(name).context("interface name")?;
    // SAFETY: plain libc call with a valid C string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        bail!("interface {name:?} not found");
    }
    Ok(index)
}

/// Runs an interface ioctl with a 40-byte `struct ifreq` that names `name`, on a socket of the
/// calling thread's network namespace; `fill` sets the request's union part first.
fn ifreq_ioctl(name: &str, request: libc::c_ulong, fill: impl FnOnce(&mut [u8; 40])) -> anyhow::Result<[u8; 40]> {
    if_index(name)?;
    let mut req = [0u8; 40];
    req[..name.len()].copy_from_slice(name.as_bytes());
    fill(&mut req);
    // SAFETY: a plain datagram socket, closed below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: an interface ioctl with a properly sized struct ifreq holding the name.
    let rc = unsafe { libc::ioctl(sock, request, req.as_mut_ptr()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(sock) };
    if rc != 0 {
        bail!("ioctl {request:#x} on {name}: {err}");
    }
    Ok(req)
}

/// Reads the link type (ARPHRD_*) with SIOCGIFHWADDR: 1 is Ethernet, 65534 ("none") is a TUN or
/// WireGuard device.
pub fn link_kind(name: &str) -> anyhow::Result<LinkKind> {
    let req = ifreq_ioctl(name, libc::SIOCGIFHWADDR, |_| {}).with_context(|| format!("reading the link type of {name}"))?;
    // struct ifreq: 16-byte name, then struct sockaddr whose first field is the family.
    match u16::from_ne_bytes([req[16], req[17]]) {
        1 => Ok(LinkKind::Ethernet),
        65534 => Ok(LinkKind::L3),
        other => bail!("interface {name:?} has link type {other}; expected Ethernet (1) or none (65534)"),
    }
}

/// The interface's driver, as `ethtool -i` shows it (ETHTOOL_GDRVINFO): "veth", "mlx5_core", ...
pub fn driver(name: &str) -> anyhow::Result<String> {
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    // struct ethtool_drvinfo: cmd, then driver[32], version, fw_version, bus_info, erom_version
    // (32 each), reserved2[12] and five u32 counts.
    let mut info = [0u8; 196];
    info[..4].copy_from_slice(&ETHTOOL_GDRVINFO.to_ne_bytes());
    let ptr = info.as_mut_ptr() as usize;
    ifreq_ioctl(name, libc::SIOCETHTOOL, |req| req[16..24].copy_from_slice(&ptr.to_ne_bytes()))?;
    let driver = &info[4..36];
    let len = driver.iter().position(|b| *b == 0).unwrap_or(driver.len());
    Ok(String::from_utf8_lossy(&driver[..len]).into_owned())
}

impl Dataplane {
    /// Attaches the LAN program; returns the mode, as `gateway status` reports it.
    pub fn attach_lan(&mut self, iface: &str, attach: LanAttach) -> anyhow::Result<&'static str> {
        if_index(iface)?;
        let (mode, label) = match attach {
            LanAttach::XdpNative => (XdpMode::Driver, "xdp native"),
            LanAttach::XdpGeneric => (XdpMode::Skb, "xdp generic (configured fallback)"),
            LanAttach::Tc => {
                let prog: &mut SchedClassifier = self.tc_program(names::PROG_TC_LAN_INGRESS)?;
                let id = prog.attach(iface, TcAttachType::Ingress).map_err(|e| anyhow!("attaching tc to {iface}: {e}"))?;
                let label = "tc ingress (configured fallback)";
                self.attachments.push(Attachment {
                    interface: iface.to_string(),
                    program: names::PROG_TC_LAN_INGRESS,
                    mode: label.to_string(),
                    link: Some(LinkId::Tc(names::PROG_TC_LAN_INGRESS, id)),
                });
                return Ok(label);
            }
        };
        let prog: &mut Xdp = self.xdp_program()?;
        let id = prog.attach(iface, mode).map_err(|e| {
            anyhow!("attaching XDP to {iface} ({label}): {e} (for a driver without native XDP, configure attach: xdp-generic or attach: tc)")
        })?;
        self.attachments.push(Attachment {
            interface: iface.to_string(),
            program: names::PROG_XDP_LAN,
            mode: label.to_string(),
            link: Some(LinkId::Xdp(id)),
        });
        Ok(label)
    }

    pub fn attach_tunnel(&mut self, iface: &str) -> anyhow::Result<LinkKind> {
        let kind = link_kind(iface)?;
        let (ingress, egress) = match kind {
            LinkKind::Ethernet => (names::PROG_TC_TUNNEL_INGRESS_ETH, names::PROG_TC_TUNNEL_EGRESS_ETH),
            LinkKind::L3 => (names::PROG_TC_TUNNEL_INGRESS_L3, names::PROG_TC_TUNNEL_EGRESS_L3),
        };
        for (name, dir, label) in [(ingress, TcAttachType::Ingress, "tc ingress"), (egress, TcAttachType::Egress, "tc egress")] {
            let prog: &mut SchedClassifier = self.tc_program(name)?;
            // tcx links on kernels that have them (6.6+), clsact + cls_bpf otherwise.
            let id = prog.attach(iface, dir).map_err(|e| anyhow!("attaching {name} to {iface} ({label}): {e}"))?;
            self.attachments.push(Attachment {
                interface: iface.to_string(),
                program: name,
                mode: label.to_string(),
                link: Some(LinkId::Tc(name, id)),
            });
        }
        Ok(kind)
    }

    /// Detaches everything, newest first. Errors are collected, not stopped at.
    pub fn detach_all(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        while let Some(mut a) = self.attachments.pop() {
            let result = match a.link.take() {
                Some(LinkId::Xdp(id)) => self.xdp_program().and_then(|p| p.detach(id).map_err(Into::into)),
                Some(LinkId::Tc(name, id)) => self.tc_program(name).and_then(|p| p.detach(id).map_err(Into::into)),
                None => Ok(()),
            };
            if let Err(e) = result {
                errors.push(format!("{} on {}: {e}", a.program, a.interface));
            }
        }
        errors
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        for e in self.detach_all() {
            tracing::warn!("detach failed: {e}");
        }
    }
}
