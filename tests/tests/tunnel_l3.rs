//! The tunnel programs for interfaces without a link header (wg0, boringtun's TUN), on a real TUN
//! device: packets written to the device enter the kernel as received on it and meet the TC
//! ingress program there.

use std::{fs::File, io::Write as _, os::fd::AsRawFd as _};

use gateway::{
    compile,
    dataplane::{Dataplane, LoadOptions, LinkKind},
    lab::netns::Netns,
    packets::{Spec, TCP_SYN},
    policy,
};
use gateway_common::stats::{HOOK_TUNNEL_INGRESS, reason, stats_index};

const IFF_TUN: i16 = 0x0001;
const IFF_NO_PI: i16 = 0x1000;
const TUNSETIFF: u64 = 0x400454ca;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

/// Opens /dev/net/tun as `tun0` inside `ns` (the fd keeps the device alive).
fn open_tun(ns: &Netns) -> File {
    ns.run(|| {
        let f = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun").expect("/dev/net/tun");
        let mut req = IfReq { name: [0; 16], flags: IFF_TUN | IFF_NO_PI, _pad: [0; 22] };
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
    ns.ip(&["addr", "add", "100.64.0.1/10", "dev", "tun0"]).unwrap();
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
            let kind = dp.attach_tunnel("tun0").expect("attach to tun0");
            let allowed = Spec { l3_only: true, ..Spec::tcp("100.64.10.5", "100.64.0.1", 40000, 22, TCP_SYN) }.build();
            let denied = Spec { l3_only: true, ..Spec::tcp("100.64.10.5", "100.64.0.1", 40000, 23, TCP_SYN) }.build();
            let garbage = vec![0x45u8, 0, 0, 200, 0, 0, 0, 0, 64, 6, 0, 0, 100, 64, 10, 5, 100, 64, 0, 1];
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
    assert_eq!(n(reason::DROP_TRUNCATED), 1, "a packet claiming 200 bytes in 20");
}
