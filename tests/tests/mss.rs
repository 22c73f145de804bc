//! MSS clamping on the tunnel interface: TCP SYNs and SYN-ACKs crossing it (either way) announce
//! at most the tunnel MTU minus 40 (IPv4) or 60 (IPv6) bytes, never more than they did, with the
//! TCP checksum fixed.
//!
//! Fixtures (BPF_PROG_TEST_RUN): packet in, exact bytes out, compared with the same packet built
//! with the clamped MSS and its checksum computed in full by the test's packet builder (not the
//! kernel's incremental update). Then real TCP in namespaces at default offloads: a peer whose
//! own link has MTU 1500 reaches a LAN host through a 1280-byte tunnel interface.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
};

use gateway::status::Report;
use gateway_common::{
    mss::MssClamp,
    stats::{HOOK_TUNNEL_EGRESS, HOOK_TUNNEL_INGRESS, reason::*},
};
use gateway_testkit::harness::{Harness, TC_ACT_OK, gateway_binary};
use gateway_testkit::{
    iperf::{self, Run, Transfer},
    netns::Netns,
    packets::{Spec, TCP_ACK, TCP_SYN},
    process::{GatewayProcess, LAB_METRICS_ADDR},
    topology::Lab,
    topology::SEED_POLICY,
};

const POLICY: &str = r#"
groups:
  clients: ["100.64.10.0/24", "fd00:10::/64"]
  servers: ["100.64.20.0/24", "fd00:20::/64"]
policies:
  - name: web
    source_groups: [clients]
    destination_groups: [servers]
    action: accept
    protocol: tcp
    ports: ["443"]
"#;

const C: &str = "100.64.10.1";
const S: &str = "100.64.20.1";
const C6: &str = "fd00:10::1";
const S6: &str = "fd00:20::1";

const SACK_OK: [u8; 2] = [4, 2];
const TIMESTAMPS: [u8; 10] = [8, 10, 0, 0, 0x12, 0x34, 0, 0, 0, 0];
const WSCALE: [u8; 3] = [3, 3, 7];

fn mss(v: u16) -> Vec<u8> {
    let [a, b] = v.to_be_bytes();
    vec![2, 4, a, b]
}

/// A SYN (or SYN-ACK) with these options and a correct checksum. Each case takes a client port
/// of its own ([`client_port`]): conntrack is on, as by default, and each case is a new flow.
fn segment(src: &str, dst: &str, sport: u16, dport: u16, flags: u8, options: Vec<u8>) -> Spec {
    Spec {
        tcp_options: options,
        l4_checksum: true,
        ..Spec::tcp(src, dst, sport, dport, flags)
    }
}

static NEXT_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(41000);

fn client_port() -> u16 {
    NEXT_PORT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The tunnel side of the harness is the test-run device (lo), clamped as a 1280-byte tunnel.
fn harness() -> Harness {
    let mut h = Harness::new(POLICY);
    h.dp.set_mss_clamp("lo", Some(MssClamp::for_mtu(1280)))
        .expect("clamp on lo");
    h
}

/// Runs `input` through a tunnel hook; asserts it passed with `verdict`, that its bytes came out
/// as `want`, and that the clamp counter moved iff the bytes changed.
#[track_caller]
fn check(h: &mut Harness, ingress: bool, input: &Spec, verdict: u32, want: &Spec, what: &str) {
    let hook = if ingress {
        HOOK_TUNNEL_INGRESS
    } else {
        HOOK_TUNNEL_EGRESS
    };
    let before = (
        h.count(hook, verdict),
        h.count(hook, MSS_CLAMPED),
        h.count(hook, MSS_NOT_CLAMPED),
    );
    let (action, out) = h.tc_bytes(ingress, &input.build());
    let after = (
        h.count(hook, verdict),
        h.count(hook, MSS_CLAMPED),
        h.count(hook, MSS_NOT_CLAMPED),
    );
    let want_bytes = want.build();
    assert_eq!(
        action,
        TC_ACT_OK,
        "{what}: dropped; {}",
        h.hook_counters(hook)
    );
    assert_eq!(
        gateway_testkit::harness::hex(&out),
        gateway_testkit::harness::hex(&want_bytes),
        "{what}: bytes out"
    );
    let clamped = input.build() != want_bytes;
    assert_eq!(
        after.0 - before.0,
        1,
        "{what}: verdict counter; {}",
        h.hook_counters(hook)
    );
    assert_eq!(
        after.1 - before.1,
        u64::from(clamped),
        "{what}: mss_clamped counter; {}",
        h.hook_counters(hook)
    );
    assert_eq!(
        after.2,
        before.2,
        "{what}: nothing failed; {}",
        h.hook_counters(hook)
    );
}

#[test]
fn syns_are_clamped_wherever_the_mss_option_sits() {
    let mut h = harness();
    let linux = |m: u16| {
        [
            mss(m),
            SACK_OK.to_vec(),
            TIMESTAMPS.to_vec(),
            vec![1],
            WSCALE.to_vec(),
        ]
        .concat()
    };
    let late = |m: u16| {
        [
            vec![1, 1],
            SACK_OK.to_vec(),
            TIMESTAMPS.to_vec(),
            vec![1],
            WSCALE.to_vec(),
            mss(m),
        ]
        .concat()
    };
    let last = |m: u16| [vec![1; 36], mss(m)].concat();
    for (name, opts) in [
        ("first", &linux as &dyn Fn(u16) -> Vec<u8>),
        ("after the others", &late),
        ("last of 40 bytes", &last),
    ] {
        // A LAN server's SYN-ACK leaving through the tunnel (outbound, not policed).
        let port = client_port();
        let out = |m| segment(S, C, 443, port, TCP_SYN | TCP_ACK, opts(m));
        check(
            &mut h,
            false,
            &out(1460),
            ACCEPT_OUTBOUND,
            &out(1240),
            &format!("SYN-ACK out, MSS {name}"),
        );
        // A peer's SYN entering (policed).
        let port = client_port();
        let inn = |m| segment(C, S, port, 443, TCP_SYN, opts(m));
        check(
            &mut h,
            true,
            &inn(8960),
            ACCEPT_POLICY,
            &inn(1240),
            &format!("SYN in, MSS {name}"),
        );
    }
    // IPv6: 60 bytes of headers.
    let port = client_port();
    let v6 = |m| segment(S6, C6, 443, port, TCP_SYN | TCP_ACK, linux(m));
    check(
        &mut h,
        false,
        &v6(1440),
        ACCEPT_OUTBOUND,
        &v6(1220),
        "IPv6 SYN-ACK out",
    );
}

#[test]
fn what_needs_no_clamp_passes_byte_for_byte() {
    let mut h = harness();
    let same = |h: &mut Harness, ingress: bool, s: Spec, verdict: u32, what: &str| {
        check(h, ingress, &s, verdict, &s, what)
    };
    // Already small enough, or exactly the limit: never raised.
    same(
        &mut h,
        false,
        segment(S, C, 443, client_port(), TCP_SYN | TCP_ACK, mss(1200)),
        ACCEPT_OUTBOUND,
        "MSS below the limit",
    );
    same(
        &mut h,
        false,
        segment(S, C, 443, client_port(), TCP_SYN | TCP_ACK, mss(1240)),
        ACCEPT_OUTBOUND,
        "MSS at the limit",
    );
    // No MSS option, no options at all.
    same(
        &mut h,
        false,
        segment(
            S,
            C,
            443,
            client_port(),
            TCP_SYN | TCP_ACK,
            [SACK_OK.to_vec(), TIMESTAMPS.to_vec()].concat(),
        ),
        ACCEPT_OUTBOUND,
        "no MSS option",
    );
    same(
        &mut h,
        false,
        segment(S, C, 443, client_port(), TCP_SYN | TCP_ACK, Vec::new()),
        ACCEPT_OUTBOUND,
        "no options",
    );
    // Not a SYN: an MSS option there means nothing and is left alone.
    same(
        &mut h,
        false,
        segment(S, C, 443, client_port(), TCP_ACK, mss(1460)),
        ACCEPT_OUTBOUND,
        "ACK with an MSS option",
    );
    // Malformed options before the MSS: nothing is rewritten (the receiver will judge them).
    same(
        &mut h,
        false,
        segment(
            S,
            C,
            443,
            client_port(),
            TCP_SYN | TCP_ACK,
            [vec![8, 0], mss(1460)].concat(),
        ),
        ACCEPT_OUTBOUND,
        "zero-length option",
    );
    // Clamping off for the interface.
    h.dp.set_mss_clamp("lo", None).unwrap();
    assert_eq!(h.dp.mss_clamp("lo").unwrap(), None);
    same(
        &mut h,
        false,
        segment(S, C, 443, client_port(), TCP_SYN | TCP_ACK, mss(1460)),
        ACCEPT_OUTBOUND,
        "clamp off",
    );
}

#[test]
fn dropped_syns_are_not_rewritten_or_counted() {
    let mut h = harness();
    let denied = segment(C, S, 40003, 22, TCP_SYN, mss(1460)).build();
    let before = h.count(HOOK_TUNNEL_INGRESS, MSS_CLAMPED);
    h.expect(HOOK_TUNNEL_INGRESS, &denied, DROP_DEFAULT);
    assert_eq!(h.count(HOOK_TUNNEL_INGRESS, MSS_CLAMPED), before);
}

// ---------------------------------------------------------------------------------------------
// Real TCP through a 1280-byte tunnel interface

/// The MSS the kernel uses on a connected socket (TCP_MAXSEG: the peer's announced MSS, less
/// the timestamp option).
fn maxseg(s: &impl std::os::fd::AsRawFd) -> u32 {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt with a properly sized int.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    assert_eq!(
        rc,
        0,
        "getsockopt TCP_MAXSEG: {}",
        std::io::Error::last_os_error()
    );
    v as u32
}

/// Opens a TCP connection from `client` to `server_addr:port` (listening in `server`), moves a
/// few bytes each way, and returns each side's MSS.
fn connection_mss(client: &Netns, server: &Netns, server_addr: IpAddr, port: u16) -> (u32, u32) {
    let listener = server
        .run_scoped(|| TcpListener::bind(SocketAddr::new("0.0.0.0".parse().unwrap(), port)))
        .unwrap()
        .expect("listen");
    let mut c = client
        .run_scoped(|| {
            TcpStream::connect_timeout(
                &SocketAddr::new(server_addr, port),
                std::time::Duration::from_secs(5),
            )
        })
        .unwrap()
        .expect("connect");
    let (mut s, _) = listener.accept().expect("accept");
    c.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    s.write_all(b"pong").unwrap();
    c.read_exact(&mut buf).unwrap();
    (maxseg(&c), maxseg(&s))
}

#[test]
fn tcp_through_a_1280_byte_tunnel_agrees_on_segments_that_fit() {
    let lab = Lab::seed().expect("lab");
    let cp1 = lab.host("cp1");
    let lan1 = lab.host("lan1");
    // The gateway's tunnel interface toward cp1 carries 1280 bytes, as NetBird's wt0 does; cp1's
    // own link and the LAN keep 1500, so both ends would announce 1460 on their own.
    lab.gw
        .ip(&["link", "set", &cp1.gw_if, "mtu", "1280"])
        .unwrap();
    let config = lab.write_config(SEED_POLICY, LAB_METRICS_ADDR).unwrap();
    let gw = GatewayProcess::start(
        &gateway_binary(),
        &lab.gw,
        &config,
        &lab.dir.join("gateway.log"),
    )
    .expect("gateway starts");

    // cp1 may reach lan1 on TCP 22 and 443 under the seed policy.
    let (client_mss, server_mss) = connection_mss(&cp1.ns, &lan1.ns, IpAddr::V4(lan1.addr), 443);
    // 1240 announced, less 12 bytes of timestamps on both sides.
    assert!(
        client_mss <= 1240 && server_mss <= 1240,
        "MSS client {client_mss}, server {server_mss}"
    );
    assert!(
        client_mss >= 1200 && server_mss >= 1200,
        "MSS client {client_mss}, server {server_mss}: lowered too far"
    );
    let st = gw.status::<Report>(&lab.gw).expect("status");
    assert!(
        st.packets("tunnel_ingress", "mss_clamped") >= 1,
        "the SYN entering was not clamped: {:?}",
        st.counters
    );
    assert!(
        st.packets("tunnel_egress", "mss_clamped") >= 1,
        "the SYN-ACK leaving was not clamped: {:?}",
        st.counters
    );
    assert_eq!(
        st.packets("tunnel_ingress", "mss_unreadable")
            + st.packets("tunnel_egress", "mss_unreadable"),
        0
    );

    // Bulk TCP both ways at the hosts' default offloads: every segment fits the tunnel.
    for (reverse, port) in [(false, 5201), (true, 5202)] {
        let o = iperf::run(
            &cp1.ns,
            &lan1.ns,
            IpAddr::V4(lan1.addr),
            Run {
                transfer: Transfer::Tcp,
                reverse,
                seconds: 2,
                port,
            },
        )
        .expect("iperf3");
        assert!(
            o.bytes_received >= 20_000_000,
            "reverse {reverse}: only {} bytes arrived ({o:?})",
            o.bytes_received
        );
    }
    // The gateway's tunnel interface never had to refuse an oversized packet toward cp1.
    let frag_needed = lab
        .gw
        .exec(&["nstat", "-az", "IcmpOutDestUnreachs"])
        .unwrap();
    let text = String::from_utf8_lossy(&frag_needed.stdout).to_string();
    let unreach: u64 = text
        .lines()
        .find(|l| l.starts_with("IcmpOutDestUnreachs"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert_eq!(
        unreach, 0,
        "the gateway sent ICMP unreachables (fragmentation needed?):\n{text}"
    );
    drop(gw);
}
