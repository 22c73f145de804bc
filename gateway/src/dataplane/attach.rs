//! Attaching programs to interfaces, and detaching them again.

use anyhow::{Context as _, anyhow, bail};
use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpMode, tc::SchedClassifierLinkId, xdp::XdpLinkId};
use gateway_common::maps as names;

use super::Dataplane;
use crate::config::XdpModeConfig;

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

/// Reads the link type (ARPHRD_*) with SIOCGIFHWADDR on a socket of the calling thread's network
/// namespace: 1 is Ethernet, 65534 ("none") is a TUN or WireGuard device.
pub fn link_kind(name: &str) -> anyhow::Result<LinkKind> {
    if_index(name)?;
    let mut req = [0u8; 40];
    req[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: a plain datagram socket, closed below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFHWADDR with a 40-byte struct ifreq holding the name.
    let rc = unsafe { libc::ioctl(sock, libc::SIOCGIFHWADDR, req.as_mut_ptr()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(sock) };
    if rc != 0 {
        bail!("reading the link type of {name}: {err}");
    }
    // struct ifreq: 16-byte name, then struct sockaddr whose first field is the family.
    match u16::from_ne_bytes([req[16], req[17]]) {
        1 => Ok(LinkKind::Ethernet),
        65534 => Ok(LinkKind::L3),
        other => bail!("interface {name:?} has link type {other}; expected Ethernet (1) or none (65534)"),
    }
}

impl Dataplane {
    pub fn attach_lan(&mut self, iface: &str, mode: XdpModeConfig) -> anyhow::Result<()> {
        if_index(iface)?;
        let prog: &mut Xdp = self.xdp_program()?;
        let (xdp_mode, label) = match mode {
            XdpModeConfig::Native => (XdpMode::Driver, "xdp native"),
            XdpModeConfig::Skb => (XdpMode::Skb, "xdp skb (configured fallback)"),
        };
        let id = prog.attach(iface, xdp_mode).map_err(|e| {
            anyhow!("attaching XDP to {iface} in {label} mode: {e} (set xdp_mode: skb for this interface to use generic XDP)")
        })?;
        self.attachments.push(Attachment {
            interface: iface.to_string(),
            program: names::PROG_XDP_LAN,
            mode: label.to_string(),
            link: Some(LinkId::Xdp(id)),
        });
        Ok(())
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
