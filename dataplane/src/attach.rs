//! Attaching programs to interfaces, and detaching them again.

use anyhow::{Context as _, anyhow, bail};
use aya::programs::{
    ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
    links::{FdLink, Link as _, PinnedLink},
    tc::{
        NlOptions, SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions, TcHandle,
        qdisc_add_clsact,
    },
    xdp::{XdpLink, XdpLinkId},
};
use gateway_common::maps as names;

use super::Dataplane;
use crate::LanAttach;
use gateway_common::mss::MssClamp;

/// Whether an interface carries Ethernet frames or bare IP packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    Ethernet,
    L3,
}

enum LinkId {
    /// The program's name: each XDP program (LAN, underlay filter, TURN) owns its links.
    Xdp(&'static str, XdpLinkId),
    Tc(&'static str, SchedClassifierLinkId),
    /// The gateway's cls_bpf filter at this hook of the attachment's interface: the kernel's,
    /// not held by this process (see [`TcLinks`]).
    TcFilter(TcAttachType),
}

/// How TC programs hang on an interface.
///
/// - tcx links (Linux 6.6+): bpf links, pinned like XDP's, swapped with `BPF_LINK_UPDATE`;
/// - cls_bpf filters under the interface's clsact qdisc, made over netlink (every kernel; the
///   only way before 6.6, e.g. Debian 12's 6.1). A filter is the kernel's, so it outlives the
///   process by itself; the gateway's filters sit at one fixed priority and handle
///   ([`TC_FILTER_PRIORITY`], [`TC_FILTER_HANDLE`]), where the next run finds them and swaps
///   its program in (cls_bpf replaces a filter's program atomically). A pinned data plane
///   records each under its links folder as an empty directory (bpffs holds no plain files),
///   so `gateway detach` knows what to remove.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TcLinks {
    /// tcx where the kernel has it, filters otherwise.
    #[default]
    Auto,
    /// Filters on any kernel (for a host whose other tools expect clsact filters).
    Netlink,
}

impl TcLinks {
    /// Whether TC programs go into cls_bpf filters on this kernel.
    pub fn filters(self) -> bool {
        match self {
            TcLinks::Netlink => true,
            TcLinks::Auto => !kernel_has_tcx(),
        }
    }
}

/// As aya decides between tcx and netlink: by the kernel's version.
fn kernel_has_tcx() -> bool {
    use aya::util::KernelVersion;
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// The gateway's cls_bpf filters: ahead of any other filter on the hook (the lowest number runs
/// first) ...
pub const TC_FILTER_PRIORITY: u16 = 1;
/// ... under one handle of its own ("gw", 1).
pub const TC_FILTER_HANDLE: TcHandle = TcHandle::new(0x6777, 1);

pub struct Attachment {
    pub interface: String,
    pub program: &'static str,
    /// "xdp native", "xdp skb", "tc ingress", "tc egress".
    pub mode: String,
    link: Option<LinkId>,
    /// The link's pin, when the data plane is pinned.
    pin: Option<std::path::PathBuf>,
    /// The link was pinned by an earlier run and got this process's program.
    pub adopted: bool,
    /// The hook, by its pin's name ("xdp", "tc-ingress", "tc-ingress-filter", ...).
    hook: &'static str,
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
fn ifreq_ioctl(
    name: &str,
    request: libc::c_ulong,
    fill: impl FnOnce(&mut [u8; 40]),
) -> anyhow::Result<[u8; 40]> {
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

/// What a tunnel interface does to the MSS option of TCP SYNs crossing it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TunnelMss {
    /// Clamp to the interface's MTU at attach time, minus 40 (IPv4) or 60 (IPv6) bytes.
    #[default]
    Auto,
    Off,
    /// This IPv4 MSS (IPv6: 20 less).
    Fixed(u16),
}

/// The interface's MTU (SIOCGIFMTU).
pub fn mtu(name: &str) -> anyhow::Result<u32> {
    let req = ifreq_ioctl(name, libc::SIOCGIFMTU, |_| {})
        .with_context(|| format!("reading the MTU of {name}"))?;
    // struct ifreq: 16-byte name, then the int MTU.
    Ok(i32::from_ne_bytes([req[16], req[17], req[18], req[19]]).max(0) as u32)
}

/// Reads the link type (ARPHRD_*) with SIOCGIFHWADDR: 1 is Ethernet, 65534 ("none") is a TUN or
/// WireGuard device.
pub fn link_kind(name: &str) -> anyhow::Result<LinkKind> {
    let req = ifreq_ioctl(name, libc::SIOCGIFHWADDR, |_| {})
        .with_context(|| format!("reading the link type of {name}"))?;
    // struct ifreq: 16-byte name, then struct sockaddr whose first field is the family.
    match u16::from_ne_bytes([req[16], req[17]]) {
        1 => Ok(LinkKind::Ethernet),
        65534 => Ok(LinkKind::L3),
        other => {
            bail!("interface {name:?} has link type {other}; expected Ethernet (1) or none (65534)")
        }
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
    ifreq_ioctl(name, libc::SIOCETHTOOL, |req| {
        req[16..24].copy_from_slice(&ptr.to_ne_bytes())
    })?;
    let driver = &info[4..36];
    let len = driver.iter().position(|b| *b == 0).unwrap_or(driver.len());
    Ok(String::from_utf8_lossy(&driver[..len]).into_owned())
}

/// Whether the interface is a veth, where an XDP program switches off the peer's segmentation
/// offload (so `attach: auto` takes TC there).
pub(crate) fn is_veth(name: &str) -> bool {
    driver(name).is_ok_and(|d| d == "veth")
}

/// Where a program hangs: one pinned link per (hook, interface).
#[derive(Clone, Copy)]
pub(crate) enum Hook {
    Xdp(XdpMode),
    Tc(TcAttachType),
}

impl Hook {
    fn pin_name(self) -> &'static str {
        match self {
            Hook::Xdp(_) => "xdp",
            Hook::Tc(TcAttachType::Ingress) => "tc-ingress",
            Hook::Tc(_) => "tc-egress",
        }
    }
}

/// The record of a cls_bpf filter in the links folder: `tc-ingress-filter@wt0`.
fn filter_record_name(dir: TcAttachType) -> &'static str {
    match dir {
        TcAttachType::Ingress => "tc-ingress-filter",
        _ => "tc-egress-filter",
    }
}

/// The interface and hook a filter record names, if `path` is one.
pub(crate) fn filter_record(path: &std::path::Path) -> Option<(String, TcAttachType)> {
    let name = path.file_name()?.to_str()?;
    let (hook, iface) = name.split_once('@')?;
    let dir = [TcAttachType::Ingress, TcAttachType::Egress]
        .into_iter()
        .find(|d| filter_record_name(*d) == hook)?;
    Some((iface.to_string(), dir))
}

/// Puts `prog` into the gateway's cls_bpf filter at `dir` of `iface`: in place of the program
/// an earlier run left there (atomically), or into a new filter, adding the clsact qdisc first
/// where the interface has none. Returns whether a filter was there. The filter stays when
/// this process ends; only [`detach_filter`] removes it.
fn attach_filter(
    prog: &mut SchedClassifier,
    iface: &str,
    dir: TcAttachType,
) -> anyhow::Result<bool> {
    // An interface with a clsact qdisc already refuses a second one: only a failure of the
    // attach below says something.
    let clsact = qdisc_add_clsact(iface).err();
    let existing =
        SchedClassifierLink::attached(iface, dir, TC_FILTER_PRIORITY, TC_FILTER_HANDLE, None)
            .with_context(|| format!("interface {iface}"))?;
    // Without a filter at that priority and handle, the replacement is refused (ENOENT).
    let (id, adopted) = match prog.attach_to_link(existing) {
        Ok(id) => (id, true),
        Err(_) => {
            let options = TcAttachOptions::Netlink(NlOptions {
                priority: TC_FILTER_PRIORITY,
                handle: TC_FILTER_HANDLE,
                classid: None,
            });
            let id = prog
                .attach_with_options(iface, dir, options)
                .map_err(anyhow::Error::from)
                .with_context(|| match &clsact {
                    Some(e) => format!("adding a cls_bpf filter (adding the clsact qdisc: {e})"),
                    None => "adding a cls_bpf filter".to_string(),
                })?;
            (id, false)
        }
    };
    // Held by the program, the filter would be removed when the program is dropped.
    std::mem::forget(prog.take_link(id)?);
    Ok(adopted)
}

/// Removes the gateway's cls_bpf filter at `dir` of `iface`; an interface that is gone took
/// it along.
pub(crate) fn detach_filter(iface: &str, dir: TcAttachType) -> anyhow::Result<()> {
    if if_index(iface).is_err() {
        return Ok(());
    }
    SchedClassifierLink::attached(iface, dir, TC_FILTER_PRIORITY, TC_FILTER_HANDLE, None)?
        .detach()
        .with_context(|| format!("removing the cls_bpf filter on {iface}"))
}

/// Removes a pin, or a filter record and its filter.
pub(crate) fn remove_pin(path: &std::path::Path) -> anyhow::Result<()> {
    if let Some((iface, dir)) = filter_record(path) {
        detach_filter(&iface, dir)?;
        return std::fs::remove_dir(path).with_context(|| format!("removing {}", path.display()));
    }
    std::fs::remove_file(path).with_context(|| format!("unpinning {}", path.display()))
}

/// The XDP hook for a program that has no TC variant (the underlay filter, the TURN fast
/// path), and its label for `gateway status`.
pub(crate) fn xdp_only(attach: LanAttach, what: &str) -> anyhow::Result<(Hook, &'static str)> {
    match attach {
        // No TC variant to fall back to; the traffic these programs take (WireGuard, TURN) is
        // UDP that hosts do not segment-offload.
        LanAttach::Auto | LanAttach::XdpNative => Ok((Hook::Xdp(XdpMode::Driver), "xdp native")),
        LanAttach::XdpGeneric => Ok((Hook::Xdp(XdpMode::Skb), "xdp generic")),
        LanAttach::Tc => Err(anyhow!(
            "{what} is an XDP program: attach xdp-native or xdp-generic"
        )),
    }
}

impl Dataplane {
    /// Attaches the LAN program; returns the mode, as `gateway status` reports it.
    pub fn attach_lan(&mut self, iface: &str, attach: LanAttach) -> anyhow::Result<&'static str> {
        if_index(iface)?;
        let (program, hook, label) = match attach {
            LanAttach::Auto if is_veth(iface) => (
                names::PROG_TC_LAN_INGRESS,
                Hook::Tc(TcAttachType::Ingress),
                "tc ingress (auto: a veth, where XDP would switch off its peer's TSO/GSO)",
            ),
            LanAttach::Auto => (
                names::PROG_XDP_LAN,
                Hook::Xdp(XdpMode::Driver),
                "xdp native",
            ),
            LanAttach::XdpNative => (
                names::PROG_XDP_LAN,
                Hook::Xdp(XdpMode::Driver),
                "xdp native",
            ),
            LanAttach::XdpGeneric => (
                names::PROG_XDP_LAN,
                Hook::Xdp(XdpMode::Skb),
                "xdp generic (configured fallback)",
            ),
            LanAttach::Tc => (
                names::PROG_TC_LAN_INGRESS,
                Hook::Tc(TcAttachType::Ingress),
                "tc ingress (configured fallback)",
            ),
        };
        self.attach(iface, program, hook, label).map_err(|e| match hook {
            Hook::Xdp(_) => anyhow!("{e:#} (for a driver without native XDP, configure attach: xdp-generic or attach: tc)"),
            Hook::Tc(_) => e,
        })?;
        Ok(label)
    }

    pub fn attach_tunnel(&mut self, iface: &str, mss: TunnelMss) -> anyhow::Result<LinkKind> {
        let kind = link_kind(iface)?;
        // The clamp is in place before the programs are: no SYN crosses unclamped.
        let clamp = match mss {
            TunnelMss::Auto => Some(MssClamp::for_mtu(mtu(iface)?)),
            TunnelMss::Off => None,
            TunnelMss::Fixed(v4) => Some(MssClamp::fixed_v4(v4)),
        };
        self.set_mss_clamp(iface, clamp)?;
        let (ingress, egress) = match kind {
            LinkKind::Ethernet => (
                names::PROG_TC_TUNNEL_INGRESS_ETH,
                names::PROG_TC_TUNNEL_EGRESS_ETH,
            ),
            LinkKind::L3 => (
                names::PROG_TC_TUNNEL_INGRESS_L3,
                names::PROG_TC_TUNNEL_EGRESS_L3,
            ),
        };
        for (name, dir, label) in [
            (ingress, TcAttachType::Ingress, "tc ingress"),
            (egress, TcAttachType::Egress, "tc egress"),
        ] {
            // tcx links on kernels that have them (6.6+), clsact + cls_bpf otherwise.
            self.attach(iface, name, Hook::Tc(dir), label)?;
        }
        Ok(kind)
    }

    /// Attaches `program` at `hook` of `iface`. With a pinned data plane, a link pinned there by
    /// an earlier run gets this program atomically (no packet sees no program), and a new link
    /// is pinned so that it outlives this process.
    pub(crate) fn attach(
        &mut self,
        iface: &str,
        program: &'static str,
        hook: Hook,
        label: &str,
    ) -> anyhow::Result<()> {
        let context = || format!("attaching {program} to {iface} ({label})");
        let hook_name = match hook {
            Hook::Tc(dir) if self.tc_filters => filter_record_name(dir),
            _ => hook.pin_name(),
        };
        // One program per hook and interface: a second would take the first one's link (or
        // filter) and silently end what the first enforces.
        if let Some(a) = self
            .attachments
            .iter()
            .find(|a| a.interface == iface && a.hook == hook_name)
        {
            bail!(
                "{iface} has {} at {} already, and a hook of an interface takes one program: \
                 give {iface} one role (tunnel, lan or underlay), or put the underlay filter at \
                 another hook (attach: xdp-native or xdp-generic)",
                a.program,
                a.mode
            );
        }
        // The link's pin, or the filter's record.
        let pin = self.pins.as_ref().map(|p| p.link(hook_name, iface));
        let (link, adopted, mode) = match hook {
            Hook::Tc(dir) if self.tc_filters => {
                let adopted =
                    attach_filter(self.tc_program(program)?, iface, dir).with_context(context)?;
                if let Some(r) = &pin {
                    std::fs::create_dir_all(r)
                        .with_context(|| format!("recording {}", r.display()))?;
                }
                let mode = format!("{label} (cls_bpf filter)");
                (LinkId::TcFilter(dir), adopted, mode)
            }
            Hook::Xdp(xdp_mode) => {
                let prog: &mut Xdp = self.xdp_program_named(program)?;
                let (id, adopted) = attach_pinned(
                    prog,
                    pin.as_deref(),
                    |p, link: XdpLink| p.attach_to_link(link),
                    |p| p.attach(iface, xdp_mode),
                    |p, id| p.take_link(id),
                )
                .with_context(context)?;
                (LinkId::Xdp(program, id), adopted, label.to_string())
            }
            Hook::Tc(dir) => {
                let prog: &mut SchedClassifier = self.tc_program(program)?;
                let (id, adopted) = attach_pinned(
                    prog,
                    pin.as_deref(),
                    |p, link: SchedClassifierLink| p.attach_to_link(link),
                    |p| p.attach(iface, dir),
                    |p, id| p.take_link(id),
                )
                .with_context(context)?;
                (LinkId::Tc(program, id), adopted, label.to_string())
            }
        };
        self.attachments.push(Attachment {
            interface: iface.to_string(),
            program,
            mode,
            link: Some(link),
            pin,
            adopted,
            hook: hook_name,
        });
        Ok(())
    }

    /// Detaches everything, newest first, pins included. Errors are collected, not stopped at.
    pub fn detach_all(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        while let Some(a) = self.attachments.pop() {
            if let Err(e) = self.detach(a) {
                errors.push(e);
            }
        }
        errors
    }

    fn detach(&mut self, mut a: Attachment) -> Result<(), String> {
        if let Some(pin) = &a.pin {
            // Without its pin the link ends when this process lets go of it (a filter's record
            // goes with its filter).
            remove_pin(pin).map_err(|e| format!("{e:#}"))?;
            if let Some(LinkId::TcFilter(_)) = a.link {
                return Ok(());
            }
        }
        let result = match a.link.take() {
            Some(LinkId::Xdp(name, id)) => self
                .xdp_program_named(name)
                .and_then(|p| p.detach(id).map_err(Into::into)),
            Some(LinkId::Tc(name, id)) => self
                .tc_program(name)
                .and_then(|p| p.detach(id).map_err(Into::into)),
            Some(LinkId::TcFilter(dir)) => detach_filter(&a.interface, dir),
            None => Ok(()),
        };
        result.map_err(|e| format!("{} on {}: {e}", a.program, a.interface))
    }

    /// Detaches the pinned links that no attachment of this process claims (an interface or a
    /// hook that left the configuration). Returns their pin names.
    pub fn release_unclaimed_links(&mut self) -> anyhow::Result<Vec<String>> {
        let Some(pins) = &self.pins else {
            return Ok(Vec::new());
        };
        let mut released = Vec::new();
        for path in pins.links() {
            if !self
                .attachments
                .iter()
                .any(|a| a.pin.as_deref() == Some(path.as_path()))
            {
                remove_pin(&path)?;
                released.push(
                    path.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                );
            }
        }
        Ok(released)
    }

    /// Undoes a start that failed half way: the links this process made are detached and, if it
    /// adopted nothing, its pinned maps are removed too. Adopted links keep enforcing.
    pub fn abandon_start(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        let fresh: Vec<Attachment> = {
            let (fresh, kept) = std::mem::take(&mut self.attachments)
                .into_iter()
                .partition(|a| !a.adopted);
            self.attachments = kept;
            fresh
        };
        for a in fresh {
            if let Err(e) = self.detach(a) {
                errors.push(e);
            }
        }
        if self.adopted.is_none()
            && let Some(root) = self.pin_root().map(std::path::Path::to_path_buf)
            && let Err(e) = super::pins::PinDir::remove_all(&root)
        {
            errors.push(format!("{e:#}"));
        }
        errors
    }
}

/// The pinned-link dance shared by XDP and TC. `update` swaps this program into an existing link;
/// `attach` makes a new one; `take` hands a new link over so it can be pinned. Returns the link
/// (owned by the program) and whether it was adopted.
fn attach_pinned<P, L, Id>(
    prog: &mut P,
    pin: Option<&std::path::Path>,
    update: impl Fn(&mut P, L) -> Result<Id, ProgramError>,
    attach: impl FnOnce(&mut P) -> Result<Id, ProgramError>,
    take: impl FnOnce(&mut P, Id) -> Result<L, ProgramError>,
) -> anyhow::Result<(Id, bool)>
where
    L: TryFrom<FdLink> + TryInto<FdLink>,
    <L as TryFrom<FdLink>>::Error: std::fmt::Display,
    <L as TryInto<FdLink>>::Error: std::fmt::Display,
{
    let Some(pin) = pin else {
        return Ok((attach(prog)?, false));
    };
    if let Ok(old) = PinnedLink::from_pin(pin) {
        let updated = L::try_from(FdLink::from(old))
            .map_err(|e| anyhow!("{e}"))
            .and_then(|l| update(prog, l).map_err(Into::into));
        match updated {
            Ok(id) => return Ok((id, true)),
            Err(e) => {
                // The interface was re-created, say: the old link is gone with it.
                tracing::warn!(pin = %pin.display(), "pinned link could not take the new program ({e:#}); attaching anew");
                std::fs::remove_file(pin)
                    .with_context(|| format!("unpinning {}", pin.display()))?;
            }
        }
    }
    let id = attach(prog)?;
    let link = take(prog, id)?;
    let fd: FdLink = link
        .try_into()
        .map_err(|e| anyhow!("{e}: a pinned data plane needs bpf links (XDP: Linux 5.9+, tcx: Linux 6.6+); set pin_dir: null on older kernels"))?;
    let pinned = fd
        .pin(pin)
        .with_context(|| format!("pinning {}", pin.display()))?;
    let id = update(
        prog,
        L::try_from(FdLink::from(pinned)).map_err(|e| anyhow!("{e}"))?,
    )?;
    Ok((id, false))
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        // A pinned data plane stays in force when its controller goes (fail-static); only an
        // unpinned one is taken down with it.
        if self.pins.is_some() {
            return;
        }
        for e in self.detach_all() {
            tracing::warn!("detach failed: {e}");
        }
    }
}
