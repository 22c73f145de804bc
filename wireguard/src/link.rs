//! The interface's link-level settings that WireGuard itself does not carry: addresses, MTU, up.
//! Addresses are added through defguard_wireguard_rs (netlink, idempotent); this module reads
//! them, deletes the ones a new network map no longer names, and sets the MTU and the up flag.

use std::{ffi::CString, io, net::IpAddr};

use anyhow::{Context as _, bail};
use ipnet::IpNet;
use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

pub fn index(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

pub fn exists(name: &str) -> bool {
    index(name).is_some()
}

pub fn mtu(name: &str) -> anyhow::Result<u32> {
    let path = format!("/sys/class/net/{name}/mtu");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    Ok(text.trim().parse()?)
}

/// The interface's global addresses (link-local IPv6 left out: the kernel manages those).
pub fn addresses(name: &str) -> anyhow::Result<Vec<IpNet>> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list that freeifaddrs releases below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error()).context("getifaddrs");
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned; its pointers are valid or null.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_netmask.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string.
        let ifname = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_string_lossy();
        if ifname != name {
            continue;
        }
        // SAFETY: the family says which sockaddr the pointers hold.
        let (addr, mask): (IpAddr, IpAddr) = unsafe {
            match (*ifa.ifa_addr).sa_family as i32 {
                libc::AF_INET => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in);
                    (
                        IpAddr::from(u32::from_be(a.sin_addr.s_addr).to_be_bytes()),
                        IpAddr::from(u32::from_be(m.sin_addr.s_addr).to_be_bytes()),
                    )
                }
                libc::AF_INET6 => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in6);
                    (
                        IpAddr::from(a.sin6_addr.s6_addr),
                        IpAddr::from(m.sin6_addr.s6_addr),
                    )
                }
                _ => continue,
            }
        };
        if let IpAddr::V6(v6) = addr
            && v6.segments()[0] & 0xffc0 == 0xfe80
        {
            continue;
        }
        let prefix = match mask {
            IpAddr::V4(m) => u32::from(m).count_ones(),
            IpAddr::V6(m) => u128::from(m).count_ones(),
        } as u8;
        if let Ok(net) = IpNet::new(addr, prefix) {
            out.push(net);
        }
    }
    // SAFETY: the list from getifaddrs above, released once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// Deletes one address (RTM_DELADDR).
pub fn delete_address(name: &str, net: IpNet) -> anyhow::Result<()> {
    let Some(index) = index(name) else {
        bail!("no interface {name}")
    };
    let mut message = AddressMessage::default();
    message.header.index = index;
    message.header.prefix_len = net.prefix_len();
    message.header.family = match net {
        IpNet::V4(_) => AddressFamily::Inet,
        IpNet::V6(_) => AddressFamily::Inet6,
    };
    message.attributes.push(AddressAttribute::Local(net.addr()));
    message
        .attributes
        .push(AddressAttribute::Address(net.addr()));
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::DelAddress(message));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    req.finalize();
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);
    let mut socket = Socket::new(NETLINK_ROUTE).context("netlink socket")?;
    socket.bind_auto().context("netlink bind")?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .context("netlink connect")?;
    socket.send(&buf, 0).context("netlink send")?;
    let mut reply = vec![0u8; 8192];
    let n = socket
        .recv(&mut &mut reply[..], 0)
        .context("netlink receive")?;
    let answer =
        NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[..n]).context("netlink reply")?;
    match answer.payload {
        NetlinkPayload::Error(e) if e.code.is_some() => {
            Err(e.to_io()).with_context(|| format!("deleting {net} from {name}"))
        }
        _ => Ok(()),
    }
}

/// An `ifreq` ioctl on a throwaway datagram socket.
fn ifreq_ioctl(
    name: &str,
    request: libc::c_ulong,
    fill: impl FnOnce(&mut libc::ifreq),
    read: bool,
) -> anyhow::Result<libc::ifreq> {
    if name.len() >= libc::IFNAMSIZ {
        bail!(
            "interface name {name:?} is longer than {} bytes",
            libc::IFNAMSIZ - 1
        );
    }
    // SAFETY: an all-zero ifreq is valid; the name fits (checked above).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    fill(&mut req);
    // SAFETY: plain socket syscalls; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("socket for ioctl");
    }
    let rc = unsafe { libc::ioctl(fd, request as _, &mut req) };
    let err = io::Error::last_os_error();
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(err).with_context(|| {
            format!(
                "ioctl {request:#x} on {name}{}",
                if read { " (read)" } else { "" }
            )
        });
    }
    Ok(req)
}

pub fn set_mtu(name: &str, mtu: u32) -> anyhow::Result<()> {
    ifreq_ioctl(
        name,
        libc::SIOCSIFMTU,
        |r| r.ifr_ifru.ifru_mtu = mtu as i32,
        false,
    )?;
    Ok(())
}

pub fn set_up(name: &str) -> anyhow::Result<()> {
    let cur = ifreq_ioctl(name, libc::SIOCGIFFLAGS, |_| {}, true)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member.
    let flags = unsafe { cur.ifr_ifru.ifru_flags } | libc::IFF_UP as i16;
    ifreq_ioctl(
        name,
        libc::SIOCSIFFLAGS,
        |r| r.ifr_ifru.ifru_flags = flags,
        false,
    )?;
    Ok(())
}
