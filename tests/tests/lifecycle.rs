//! Fail-static: the pinned data plane keeps enforcing the last policy when `gateway run` is
//! killed, and a restart (clean or after a crash) takes over without losing a packet of the
//! flows it carries. Counted at the receiver, under load.

use std::{net::IpAddr, time::Duration};

use gateway::{demo, status::Report};
use gateway_testkit::harness::gateway_binary;
use gateway_testkit::{
    iperf::{self, Run, Transfer},
    process::{GatewayProcess, LAB_METRICS_ADDR},
    topology::Lab,
    topology::SEED_POLICY,
    traffic,
};

fn start(lab: &Lab, log: &str) -> GatewayProcess {
    start_with(lab, "", log)
}

/// The config line that puts the TC programs in cls_bpf filters on any kernel.
const TC_FILTERS: &str = "  tc_links: netlink\n";

/// The gateway on the seed lab, with `extra` appended to its config.
fn start_with(lab: &Lab, extra: &str, log: &str) -> GatewayProcess {
    let config = lab
        .write_config_extra(SEED_POLICY, LAB_METRICS_ADDR, extra)
        .expect("config");
    GatewayProcess::start(&gateway_binary(), &lab.gw, &config, &lab.dir.join(log))
        .expect("gateway starts")
}

#[test]
fn sigkill_leaves_the_last_policy_enforcing() {
    let lab = Lab::seed().expect("lab");
    let _servers = demo::start_servers(&lab).expect("servers");
    let gw = start(&lab, "gateway.log");
    let (orch, lin1) = (&lab.host("orch1").ns, IpAddr::V4(lab.host("lin1").addr));
    let (lin1_ns, web1) = (&lab.host("lin1").ns, IpAddr::V4(lab.host("web1").addr));
    let (cp1, lan1) = (&lab.host("cp1").ns, IpAddr::V4(lab.host("lan1").addr));
    let mut live = traffic::tcp_open(orch, lin1, 443).expect("orch1 -> lin1:443 is allowed");
    assert!(live.exchange(b"before"));
    assert!(!traffic::tcp_exchange(lin1_ns, web1, 443), "demo isolation");

    gw.crash().unwrap();
    // Allowed flows keep flowing, new allowed ones open, denied ones stay denied.
    assert!(
        live.exchange(b"after kill -9"),
        "the live flow must survive the controller"
    );
    assert!(
        traffic::tcp_exchange(cp1, lan1, 80),
        "control plane to the LAN"
    );
    assert!(
        !traffic::tcp_exchange(lin1_ns, web1, 443),
        "demo isolation must hold without the controller"
    );
    assert!(
        !traffic::tcp_exchange(&lab.host("win1").ns, lan1, 80),
        "demo-no-internet must hold without the controller"
    );

    // The next run adopts it: the flow carries on and the generation continues.
    let gw = start(&lab, "gateway2.log");
    assert!(
        gw.log_text().contains("adopted the pinned data plane"),
        "{}",
        gw.log_text()
    );
    let st = gw.status::<Report>(&lab.gw).unwrap();
    assert_eq!(
        (st.adopted_generation, st.generation),
        (Some(1), 2),
        "generation 1 adopted, the file applied as 2"
    );
    assert_eq!(st.pin_dir.as_deref(), Some(lab.pin_dir().to_str().unwrap()));
    assert!(live.exchange(b"after the restart"));
    assert!(!traffic::tcp_exchange(lin1_ns, web1, 443));

    // A data plane of another layout is not adopted: the start is refused, the running one
    // stays as it is.
    let foreign = lab.pin_dir().join("v0");
    std::fs::create_dir_all(&foreign).unwrap();
    gw.stop().unwrap();
    let config = lab.write_config(SEED_POLICY, LAB_METRICS_ADDR).unwrap();
    let out = lab
        .gw
        .command(gateway_binary().to_str().unwrap())
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && err.contains("another layout (v0)"),
        "{err}"
    );
    assert!(live.exchange(b"still enforced as before"));
    assert!(!traffic::tcp_exchange(lin1_ns, web1, 443));
}

/// A steady UDP stream (counted by sequence number at the receiver) and a bulk TCP transfer
/// run while the gateway is killed and restarted, then stopped and restarted. The UDP data flows
/// from the LAN host to the overlay peer that opened the flow: no policy allows that direction,
/// so only the flow's tracked state lets it through, and a restart that lost the state would
/// drop its datagrams at the LAN hook. The gateway's own counters (pinned, so they span all
/// three processes) must show no drop on that path; the receiver's count must agree, but for
/// what a 2-core VM running a bulk transfer beside it lets its socket lose. (The exact count at
/// an XDP sink, with nothing else on the host, is the `restart` benchmark.)
#[test]
fn restarts_under_load_lose_no_packet_of_established_flows() {
    restarts_under_load("");
}

/// The same with the TC programs in cls_bpf filters, whose program a restart replaces in place.
#[test]
fn restarts_under_load_lose_no_packet_with_cls_bpf_filters() {
    restarts_under_load(TC_FILTERS);
}

/// The restart test, with `extra` appended to the lab's gateway config.
fn restarts_under_load(extra: &str) {
    let lab = Lab::seed().expect("lab");
    let _servers = demo::start_servers(&lab).expect("servers");
    let start = |lab: &Lab, log: &str| start_with(lab, extra, log);
    let gw = start(&lab, "gateway.log");
    let drops_on_the_path = |st: &gateway::status::Report| -> u64 {
        st.counters
            .iter()
            .filter(|c| {
                c.verdict == "drop" && (c.direction == "lan" || c.direction == "tunnel_egress")
            })
            .map(|c| c.packets)
            .sum()
    };
    let drops_before = drops_on_the_path(&gw.status::<Report>(&lab.gw).unwrap());
    let (cp1, lan1) = (&lab.host("cp1").ns, lab.host("lan1"));
    let (lin1_ns, web1) = (&lab.host("lin1").ns, IpAddr::V4(lab.host("web1").addr));
    let done = std::sync::atomic::AtomicBool::new(false);
    let lan1_addr = IpAddr::V4(lan1.addr);
    // Datagrams the receiving socket itself drops (its buffer full while two cores are busy with
    // the bulk transfer and a restarting gateway's verifier) are counted by its kernel.
    let socket_drops = || gateway_testkit::traffic::udp_socket_drops(cp1);
    let socket_drops_before = socket_drops();
    let udp = Run {
        transfer: Transfer::Udp {
            payload: 1400,
            mbit_per_s: 50,
        },
        reverse: true,
        seconds: 8,
        port: 5301,
    };
    let tcp = Run {
        transfer: Transfer::Tcp,
        reverse: false,
        seconds: 8,
        port: 5302,
    };
    let (udp_result, tcp_result, gw_status, leaks) = std::thread::scope(|s| {
        let u = s.spawn(|| iperf::run(cp1, &lan1.ns, lan1_addr, udp));
        let t = s.spawn(|| iperf::run(cp1, &lan1.ns, lan1_addr, tcp));
        // Denied traffic probed all along: it must never get through, not even between runs.
        let probe = s.spawn(|| {
            let mut leaks = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                leaks += traffic::tcp_exchange(lin1_ns, web1, 443) as u32;
            }
            leaks
        });
        std::thread::sleep(Duration::from_millis(1500));
        gw.crash().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let gw = start(&lab, "gateway2.log");
        std::thread::sleep(Duration::from_millis(1500));
        gw.stop().unwrap();
        let gw = start(&lab, "gateway3.log");
        let (u, t) = (u.join().unwrap(), t.join().unwrap());
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (
            u,
            t,
            gw.status::<Report>(&lab.gw).unwrap(),
            probe.join().unwrap(),
        )
    });
    let generation = gw_status.generation;
    let gateway_drops = drops_on_the_path(&gw_status) - drops_before;
    assert_eq!(leaks, 0, "denied traffic got through during a restart");
    let udp_result = udp_result.expect("udp stream");
    let tcp_result = tcp_result.expect("tcp stream");
    assert!(udp_result.packets > 20_000, "{udp_result:?}");
    assert_eq!(
        gateway_drops, 0,
        "the gateway dropped packets of established flows across restarts: {:?}",
        gw_status.counters
    );
    let dropped_by_the_socket = socket_drops() - socket_drops_before;
    assert!(
        udp_result
            .lost_packets
            .saturating_sub(dropped_by_the_socket)
            * 200
            <= udp_result.packets,
        "datagrams lost on the way (beyond the {dropped_by_the_socket} the receiving socket dropped): {udp_result:?}"
    );
    assert!(tcp_result.bytes_received >= 100_000_000, "{tcp_result:?}");
    assert_eq!(generation, 3, "each run adopted the last one's data plane");
}

/// The TC programs as cls_bpf filters under clsact (`tc_links: netlink`; what `auto` takes on
/// kernels before 6.6, such as Debian 12's 6.1, which have no tcx links): the filters are the
/// kernel's, so they stay when the gateway is killed, the next run swaps its programs into the
/// same filters (never a second filter, never none), and `gateway detach` removes them.
#[test]
fn cls_bpf_filters_outlive_the_gateway_and_take_the_next_runs_programs() {
    let lab = Lab::seed().expect("lab");
    let _servers = demo::start_servers(&lab).expect("servers");
    let start = |log: &str| start_with(&lab, TC_FILTERS, log);
    let gw = start("gateway.log");
    let tunnel = lab.host("orch1").gw_if.clone();
    // What the kernel holds on the tunnel interface's ingress: (preference, handle, program id)
    // per filter, from tc's own listing (a filter's line names its handle; a line without one
    // heads the filters of a preference).
    let filters = || -> Vec<(u32, String, u32)> {
        let out = lab
            .gw
            .exec(&["tc", "filter", "show", "dev", &tunnel, "ingress"])
            .expect("tc filter show");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.lines()
            .filter(|l| l.contains(" bpf ") && l.contains(" handle "))
            .map(|l| {
                let field = |name: &str| {
                    let mut words = l.split_whitespace();
                    words.find(|w| *w == name);
                    words.next().unwrap_or_default().to_string()
                };
                (
                    field("pref").parse().unwrap_or(0),
                    field("handle"),
                    field("id").parse().unwrap_or(0),
                )
            })
            .collect()
    };
    let first = filters();
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(
        (first[0].0, first[0].1.as_str()),
        (1, "0x67770001"),
        "the gateway's priority and handle"
    );
    let st = gw.status::<Report>(&lab.gw).unwrap();
    assert!(
        st.attachments
            .iter()
            .any(|a| a.interface == tunnel && a.mode == "tc ingress (cls_bpf filter)"),
        "{:?}",
        st.attachments
    );
    let (orch, lin1) = (&lab.host("orch1").ns, IpAddr::V4(lab.host("lin1").addr));
    let (lin1_ns, web1) = (&lab.host("lin1").ns, IpAddr::V4(lab.host("web1").addr));
    let mut live = traffic::tcp_open(orch, lin1, 443).expect("orch1 -> lin1:443 is allowed");
    assert!(live.exchange(b"before"));
    assert!(!traffic::tcp_exchange(lin1_ns, web1, 443), "demo isolation");

    gw.crash().unwrap();
    assert_eq!(filters(), first, "the filter went with the process");
    assert!(live.exchange(b"after kill -9"));
    assert!(
        !traffic::tcp_exchange(lin1_ns, web1, 443),
        "fail open: demo isolation without the controller"
    );

    let gw = start("gateway2.log");
    let st = gw.status::<Report>(&lab.gw).unwrap();
    assert_eq!(st.adopted_generation, Some(1), "{}", gw.log_text());
    let second = filters();
    assert_eq!(
        second.len(),
        1,
        "one filter, not a second beside it: {second:?}"
    );
    assert_eq!((second[0].0, &second[0].1), (1, &first[0].1));
    assert_ne!(
        second[0].2, first[0].2,
        "the new run's program is in the filter"
    );
    assert!(live.exchange(b"after the restart"));
    assert!(!traffic::tcp_exchange(lin1_ns, web1, 443));

    // Removing enforcement is an explicit act, and it removes the filters.
    gw.stop().unwrap();
    assert_eq!(
        filters().len(),
        1,
        "a clean stop leaves the filter enforcing"
    );
    // Filters are found by their interface's name: from another namespace, `gateway detach`
    // names what it cannot reach.
    use gateway_dataplane::pins::PinDir;
    let elsewhere = PinDir::filters_elsewhere(&lab.pin_dir());
    assert!(elsewhere.contains(&tunnel), "{elsewhere:?}");
    let here = lab
        .gw
        .run_scoped(|| PinDir::filters_elsewhere(&lab.pin_dir()))
        .unwrap();
    assert_eq!(here, Vec::<String>::new());
    gateway_testkit::process::detach(&gateway_binary(), &lab.gw, &lab.pin_dir())
        .expect("gateway detach");
    assert_eq!(filters(), vec![], "gateway detach left a filter");
    assert!(
        traffic::tcp_exchange(lin1_ns, web1, 443),
        "nothing filters after gateway detach"
    );
}
