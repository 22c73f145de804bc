//! The tunnel programs for interfaces without a link header (wg0, boringtun's TUN), on a real TUN
//! device: packets written to the device enter the kernel as received on it and meet the TC
//! ingress program there.

use std::{fs::File, io::Write as _, os::fd::AsRawFd as _};

use gateway_common::stats::{HOOK_TUNNEL_INGRESS, reason, stats_index};
use gateway_dataplane::{Dataplane, LinkKind, LoadOptions};
use gateway_policy::{self as policy, compile};
use gateway_testkit::{
    netns::Netns,
    packets::{Spec, TCP_SYN},
};

const IFF_TUN: i16 = 0x0001;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
const TUNSETIFF: u64 = 0x400454ca;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

/// Opens /dev/net/tun as `tun0` inside `ns` (the fd keeps the device alive).
fn open_tun(ns: &Netns) -> File {
    open_tun_with(ns, 0)
}

fn open_tun_with(ns: &Netns, extra_flags: i16) -> File {
    ns.run(move || {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .expect("/dev/net/tun");
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TUN | IFF_NO_PI | extra_flags,
            _pad: [0; 22],
        };
        req.name[..4].copy_from_slice(b"tun0");
        // SAFETY: TUNSETIFF with a properly sized ifreq.
        let rc = unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF as _, &mut req) };
        assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
        f
    })
    .expect("thread in namespace")
}

#[test]
fn l3_tunnel_programs_judge_packets_on_a_tun_device() {
    let ns = Netns::create(&format!("gwtun{}", std::process::id())).expect("netns");
    let mut tun = open_tun(&ns);
    ns.ip(&["addr", "add", "100.64.0.1/10", "dev", "tun0"])
        .unwrap();
    ns.ip(&["link", "set", "tun0", "up"]).unwrap();
    let set = policy::parse_str(
        "groups:\n  peers: [100.64.10.0/24]\npolicies:\n  - name: ssh-to-gw\n    source_groups: [peers]\n    destination_groups: [\"*\"]\n    action: accept\n    protocol: tcp\n    ports: [22]\n",
        "tun.yaml",
    )
    .unwrap();
    let compiled = compile::compile(&set, &compile::Limits::default()).unwrap();
    // Attach from a thread inside the namespace: interface lookups and netlink are per-namespace.
    let (counters, kind) = ns
        .run(move || {
            let mut dp = Dataplane::load(&LoadOptions::default()).expect("load");
            dp.apply(&compiled).expect("apply");
            let kind = dp
                .attach_tunnel("tun0", gateway_dataplane::TunnelMss::Auto)
                .expect("attach to tun0");
            let allowed = Spec {
                l3_only: true,
                ..Spec::tcp("100.64.10.5", "100.64.0.1", 40000, 22, TCP_SYN)
            }
            .build();
            let denied = Spec {
                l3_only: true,
                ..Spec::tcp("100.64.10.5", "100.64.0.1", 40000, 23, TCP_SYN)
            }
            .build();
            let garbage = vec![
                0x45u8, 0, 0, 200, 0, 0, 0, 0, 64, 6, 0, 0, 100, 64, 10, 5, 100, 64, 0, 1,
            ];
            for p in [&allowed, &denied, &denied, &garbage] {
                tun.write_all(p).expect("write to tun");
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
            (dp.verdict_counters().expect("counters"), kind)
        })
        .unwrap();
    assert_eq!(kind, LinkKind::L3);
    let n = |r: u32| counters[stats_index(HOOK_TUNNEL_INGRESS, r) as usize].packets;
    assert_eq!(n(reason::ACCEPT_POLICY), 1);
    assert_eq!(n(reason::DROP_DEFAULT), 2);
    assert_eq!(
        n(reason::DROP_TRUNCATED),
        1,
        "a packet claiming 200 bytes in 20"
    );
}

/// The one's-complement sum of the UDP pseudo-header, folded and not inverted: what a sender
/// leaves in the checksum field for the device (here the kernel's GSO) to finish.
fn pseudo_header_seed(src: [u8; 4], dst: [u8; 4], udp_len: u16) -> u16 {
    let mut sum: u32 = 17 + udp_len as u32;
    for w in [src, dst] {
        sum += u16::from_be_bytes([w[0], w[1]]) as u32 + u16::from_be_bytes([w[2], w[3]]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Large writes, as a userspace WireGuard hands decrypted traffic to its TUN: full-size
/// datagrams and a UDP GSO super-packet of 20 segments (a virtio-net header, as wireguard-go
/// writes with offloads on). The super-packet reaches the TC program as one skb of 28 KB whose
/// payload is not linear; it must be judged by its real length and arrive, segmented, at a
/// socket behind the tunnel.
#[test]
fn large_and_gso_writes_on_a_tun_device_are_judged_and_delivered() {
    const SEGMENTS: usize = 20;
    const SEGMENT: usize = 1400;
    let ns = Netns::create(&format!("gwtungso{}", std::process::id())).expect("netns");
    let mut tun = open_tun_with(&ns, IFF_VNET_HDR);
    ns.ip(&["addr", "add", "100.64.0.1/10", "dev", "tun0"])
        .unwrap();
    ns.ip(&["link", "set", "tun0", "up"]).unwrap();
    let set = policy::parse_str(
        "groups:\n  peers: [100.64.10.0/24]\npolicies:\n  - name: udp-in\n    source_groups: [peers]\n    destination_groups: [\"*\"]\n    action: accept\n    protocol: udp\n    ports: [5300]\n",
        "tun.yaml",
    )
    .unwrap();
    let compiled = compile::compile(&set, &compile::Limits::default()).unwrap();
    let (counters, received) = ns
        .run(move || {
            let socket = std::net::UdpSocket::bind("100.64.0.1:5300").expect("bind");
            socket
                .set_read_timeout(Some(std::time::Duration::from_millis(500)))
                .unwrap();
            let mut dp = Dataplane::load(&LoadOptions::default()).expect("load");
            dp.apply(&compiled).expect("apply");
            dp.attach_tunnel("tun0", gateway_dataplane::TunnelMss::Auto)
                .expect("attach to tun0");
            let (src, dst) = ([100u8, 64, 10, 5], [100u8, 64, 0, 1]);
            // A full-size datagram (1500 bytes of IP) without offload: virtio header all zero.
            let full = Spec {
                l3_only: true,
                payload_len: 1472,
                ..Spec::udp("100.64.10.5", "100.64.0.1", 40000, 5300)
            }
            .build();
            let mut write = vec![0u8; 10];
            write.extend_from_slice(&full);
            tun.write_all(&write).expect("full-size write");
            // The GSO super-packet: checksum left to the kernel (NEEDS_CSUM), GSO_UDP_L4.
            let mut sp = Spec {
                l3_only: true,
                payload_len: SEGMENTS * SEGMENT,
                ..Spec::udp("100.64.10.5", "100.64.0.1", 40001, 5300)
            }
            .build();
            let udp_len = (8 + SEGMENTS * SEGMENT) as u16;
            sp[26..28].copy_from_slice(&pseudo_header_seed(src, dst, udp_len).to_be_bytes());
            for (i, b) in sp[28..].iter_mut().enumerate() {
                *b = (i / SEGMENT) as u8;
            }
            let mut hdr = vec![1u8, 5];
            for v in [28u16, SEGMENT as u16, 20, 6] {
                hdr.extend_from_slice(&v.to_le_bytes());
            }
            hdr.extend_from_slice(&sp);
            tun.write_all(&hdr).expect("GSO write");
            let mut received = Vec::new();
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = socket.recv(&mut buf) {
                received.push(buf[..n].to_vec());
            }
            (dp.verdict_counters().expect("counters"), received)
        })
        .unwrap();
    let c = |r: u32| counters[stats_index(HOOK_TUNNEL_INGRESS, r) as usize];
    assert_eq!(c(reason::DROP_TRUNCATED).packets, 0);
    assert_eq!(c(reason::DROP_NOT_LINEAR).packets, 0);
    // One skb per write: the full-size datagram and the whole super-packet.
    assert_eq!(
        c(reason::ACCEPT_POLICY).packets,
        2,
        "{:?}",
        c(reason::ACCEPT_POLICY)
    );
    assert_eq!(
        c(reason::ACCEPT_POLICY).bytes as usize,
        1500 + 28 + SEGMENTS * SEGMENT
    );
    assert_eq!(
        received.len(),
        1 + SEGMENTS,
        "datagrams at the socket: {:?}",
        received.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert_eq!(received[0].len(), 1472);
    for (i, d) in received[1..].iter().enumerate() {
        assert_eq!(d.len(), SEGMENT);
        assert!(
            d.iter().all(|b| *b == i as u8),
            "segment {i} carries its own bytes"
        );
    }
}

/// Receives one UDP datagram on `socket` with the TTL it arrived with (`IP_RECVTTL`): an oracle
/// for "one hop fewer" that reads the kernel's view, not the gateway's.
fn recv_with_ttl(socket: &std::net::UdpSocket) -> Option<(usize, u8)> {
    let fd = socket.as_raw_fd();
    let on: libc::c_int = 1;
    // SAFETY: setsockopt with a properly sized int.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_RECVTTL,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "IP_RECVTTL: {}", std::io::Error::last_os_error());
    let mut buf = vec![0u8; 65536];
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    // SAFETY: recvmsg with the buffers above (the socket's read timeout bounds the wait).
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return None;
    }
    // SAFETY: walking the control messages recvmsg wrote into `control`.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_TTL {
                let ttl = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                return Some((n as usize, ttl as u8));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    panic!("no IP_TTL control message");
}

/// TC forwarding from a tunnel without a link header must push one before its redirect; where
/// the kernel refuses that (a datagram larger than an skb may grow to without GSO, here 20 KB
/// on jumbo MTUs), the packet goes to the kernel unchanged and the kernel forwards it. It must
/// then arrive one hop fewer, not two: the program lowers the TTL only once nothing can hand
/// the packet back.
#[test]
fn a_packet_tc_forwarding_hands_back_to_the_kernel_loses_one_hop_not_two() {
    const PAYLOAD: usize = 20_000;
    let id = std::process::id();
    let gw = Netns::create(&format!("gwtunfw{id}")).expect("netns");
    let lan = Netns::create(&format!("gwtunfwl{id}")).expect("netns");
    let mut tun = open_tun(&gw);
    gateway_testkit::netns::veth(&gw, "lan0", &lan, "eth0").unwrap();
    gw.ip_line("addr add 100.64.0.1/10 dev tun0").unwrap();
    gw.ip_line("link set tun0 mtu 65000 up").unwrap();
    gw.ip_line("addr add 198.18.30.1/24 dev lan0").unwrap();
    gw.ip_line("link set lan0 mtu 65000").unwrap();
    lan.ip_line("addr add 198.18.30.2/24 dev eth0").unwrap();
    lan.ip_line("link set eth0 mtu 65000").unwrap();
    gw.sysctl("net.ipv4.ip_forward", "1").unwrap();
    gw.sysctl("net.ipv4.conf.all.rp_filter", "0").unwrap();
    gw.sysctl("net.ipv4.conf.tun0.rp_filter", "0").unwrap();
    let socket = lan
        .run(|| std::net::UdpSocket::bind("198.18.30.2:5300").expect("bind"))
        .unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    // The neighbour is known, as on a LAN in use: the FIB lookup succeeds at once.
    let mac = lan.exec(&["cat", "/sys/class/net/eth0/address"]).unwrap();
    let mac = String::from_utf8_lossy(&mac.stdout).trim().to_string();
    gw.ip_line(&format!(
        "neigh replace 198.18.30.2 lladdr {mac} dev lan0 nud permanent"
    ))
    .unwrap();
    let set = policy::parse_str(
        "groups:\n  peers: [100.64.10.0/24]\npolicies:\n  - name: udp-in\n    source_groups: [peers]\n    destination_groups: [\"*\"]\n    action: accept\n    protocol: udp\n    ports: [5300]\n",
        "tun.yaml",
    )
    .unwrap();
    let compiled = compile::compile(&set, &compile::Limits::default()).unwrap();
    let counters = gw
        .run(move || {
            let mut dp = Dataplane::load(&LoadOptions::default()).expect("load");
            dp.apply(&compiled).expect("apply");
            dp.attach_tunnel("tun0", gateway_dataplane::TunnelMss::Auto)
                .expect("attach to tun0");
            dp.enable_tc_forward(&["lan0".to_string()], &["tun0".to_string()])
                .expect("tc forwarding");
            let packet = |payload_len: usize, sport: u16| {
                Spec {
                    l3_only: true,
                    payload_len,
                    ..Spec::udp("100.64.10.5", "198.18.30.2", sport, 5300)
                }
                .build()
            };
            // A full-size datagram, forwarded in TC, then the one the kernel must take.
            tun.write_all(&packet(1472, 40000)).expect("write");
            tun.write_all(&packet(PAYLOAD, 40001)).expect("write");
            std::thread::sleep(std::time::Duration::from_millis(300));
            dp.verdict_counters().expect("counters")
        })
        .unwrap();
    let c = |r: u32| counters[stats_index(HOOK_TUNNEL_INGRESS, r) as usize].packets;
    assert_eq!(c(reason::ACCEPT_POLICY), 2);
    assert_eq!(c(reason::TC_FORWARDED), 1, "the full-size datagram");
    assert_eq!(c(reason::LEFT_TO_KERNEL), 1, "the 20 KB datagram");
    let received: Vec<_> = std::iter::from_fn(|| recv_with_ttl(&socket)).collect();
    assert_eq!(
        received,
        [(1472, 63), (PAYLOAD, 63)],
        "(length, TTL) of the datagrams at the LAN host, sent with TTL 64"
    );
}
