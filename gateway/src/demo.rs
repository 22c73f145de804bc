//! `gateway demo`: by default the seed-000 lab over real WireGuard with the embedded management
//! service ([`wireguard`]); with `--policy FILE`, the seed lab with veth stand-ins for tunnels
//! and the policy from a file: traffic for each pair of groups, and a table of what was
//! expected, what happened, and what the gateway counted.

pub mod wireguard;

use std::{
    net::IpAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::{Context as _, bail};

use crate::status::Report;
use gateway_testkit::{
    process::{GatewayProcess, LAB_METRICS_ADDR},
    topology::Lab,
    traffic::{self, Servers},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    Tcp(u16),
    Udp(u16),
    Ping,
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Probe::Tcp(p) => write!(f, "tcp/{p}"),
            Probe::Udp(p) => write!(f, "udp/{p}"),
            Probe::Ping => write!(f, "ping"),
        }
    }
}

pub struct Case {
    pub from: &'static str,
    pub to: &'static str,
    pub probe: Probe,
    pub accept: bool,
    pub why: &'static str,
}

const fn case(
    from: &'static str,
    to: &'static str,
    probe: Probe,
    accept: bool,
    why: &'static str,
) -> Case {
    Case {
        from,
        to,
        probe,
        accept,
        why,
    }
}

/// Traffic for each pair of groups, and what the seed's policies say about it.
pub const SEED_MATRIX: &[Case] = &[
    case(
        "cp1",
        "web1",
        Probe::Tcp(443),
        true,
        "control-plane-full-access",
    ),
    case(
        "cp1",
        "lin1",
        Probe::Ping,
        true,
        "control-plane-full-access",
    ),
    case(
        "cp1",
        "lan1",
        Probe::Tcp(80),
        true,
        "control-plane-full-access (LAN via XDP)",
    ),
    case(
        "cp1",
        "dns",
        Probe::Udp(53),
        true,
        "control-plane-full-access",
    ),
    case(
        "orch1",
        "lin1",
        Probe::Tcp(443),
        true,
        "orchestration-to-containers",
    ),
    case(
        "orch1",
        "win1",
        Probe::Tcp(6900),
        true,
        "orchestration-to-containers",
    ),
    case(
        "orch1",
        "web1",
        Probe::Tcp(2377),
        true,
        "orchestration-to-containers",
    ),
    case(
        "orch1",
        "lin1",
        Probe::Tcp(22),
        false,
        "default deny (port not listed)",
    ),
    case(
        "orch1",
        "win1",
        Probe::Ping,
        false,
        "default deny (tcp only)",
    ),
    case("orch1", "cp1", Probe::Tcp(443), false, "default deny"),
    case("lin1", "web1", Probe::Tcp(443), false, "demo-isolation"),
    case("win1", "lin1", Probe::Ping, false, "demo-isolation"),
    case("web1", "win1", Probe::Udp(53), false, "demo-isolation"),
    case("lin1", "orch1", Probe::Tcp(443), false, "demo-no-internet"),
    case("win1", "cp1", Probe::Tcp(443), false, "demo-no-internet"),
    case("web1", "lan1", Probe::Tcp(80), false, "demo-no-internet"),
    case(
        "web1",
        "dns",
        Probe::Udp(53),
        true,
        "demo-no-internet exception (DNS)",
    ),
    case(
        "lin1",
        "dns",
        Probe::Udp(5353),
        false,
        "demo-no-internet (not the DNS port)",
    ),
    case(
        "win1",
        "dns",
        Probe::Tcp(53),
        false,
        "demo-no-internet (DNS exception is udp)",
    ),
    case(
        "lan1",
        "cp1",
        Probe::Tcp(443),
        false,
        "default deny (LAN-initiated, XDP)",
    ),
    case(
        "dns",
        "cp1",
        Probe::Udp(53),
        false,
        "default deny (no group)",
    ),
];

pub const TCP_PORTS: &[u16] = &[22, 53, 80, 443, 2377, 6900];
pub const UDP_PORTS: &[u16] = &[53, 5353];

/// Starts echo servers on every lab host.
pub fn start_servers(lab: &Lab) -> anyhow::Result<Vec<Servers>> {
    lab.hosts
        .iter()
        .map(|h| Servers::start(&h.ns, TCP_PORTS, UDP_PORTS))
        .collect()
}

pub fn probe(lab: &Lab, c: &Case) -> bool {
    probe_addr(
        &lab.host(c.from).ns,
        IpAddr::V4(lab.host(c.to).addr),
        c.probe,
    )
}

/// Whether one exchange of `probe` from `from` to `to` came back.
pub fn probe_addr(from: &gateway_testkit::netns::Netns, to: IpAddr, probe: Probe) -> bool {
    match probe {
        Probe::Tcp(p) => traffic::tcp_exchange(from, to, p),
        Probe::Udp(p) => traffic::udp_exchange(from, to, p),
        Probe::Ping => traffic::ping(from, to),
    }
}

/// Packets the gateway accepted and dropped so far (all hooks).
pub fn totals(r: &Report) -> (u64, u64) {
    r.counters
        .iter()
        .fold((0, 0), |(a, d), c| match c.verdict.as_str() {
            "accept" => (a + c.packets, d),
            "drop" => (a, d + c.packets),
            _ => (a, d),
        })
}

pub fn run(policy: Option<&Path>) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the demo builds network namespaces and loads BPF programs: run it as root (cargo xtask demo does)"
        );
    }
    match policy {
        None => wireguard::run(),
        Some(p) => run_policy_file(p),
    }
}

/// The seed lab with veths standing in for tunnels and the policy from a file.
fn run_policy_file(policy: &Path) -> anyhow::Result<()> {
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    let policy_text =
        std::fs::read_to_string(policy).with_context(|| format!("reading {}", policy.display()))?;
    println!("Building the seed-000 lab in network namespaces...");
    let lab = Lab::seed()?;
    let _servers = start_servers(&lab)?;
    let config = lab.write_config(&policy_text, LAB_METRICS_ADDR)?;
    let binary = std::env::current_exe()?;
    let gw = GatewayProcess::start(&binary, &lab.gw, &config, &lab.dir.join("gateway.log"))?;
    let st: Report = gw.status(&lab.gw)?;
    println!(
        "Gateway running in namespace {} (policy generation {}, {} policies):",
        lab.gw.name, st.generation, st.rules
    );
    for a in &st.attachments {
        println!("  {:<8} {:<22} {}", a.interface, a.program, a.mode);
    }
    println!("\nHosts:");
    for h in &lab.hosts {
        println!("  {:<6} {:<15} {}", h.name, h.addr, h.role);
    }
    println!();
    println!(
        "{:<22} {:<9} {:<9} {:<9} {:<14} why",
        "flow", "probe", "expected", "observed", "gw acc/drop"
    );
    let mut failures = 0;
    for c in SEED_MATRIX {
        if interrupted.load(Ordering::SeqCst) {
            bail!("interrupted; the lab has been removed");
        }
        // Ctrl-C in a terminal reaches the gateway too, which then detaches and exits.
        let (Ok(before), ok, Ok(after)) = (gw.status(&lab.gw), probe(&lab, c), gw.status(&lab.gw))
        else {
            if interrupted.load(Ordering::SeqCst) {
                bail!("interrupted; the lab has been removed");
            }
            bail!("the gateway stopped answering:\n{}", gw.log_text());
        };
        let (before, after) = (totals(&before), totals(&after));
        let verdict = |a: bool| if a { "accept" } else { "drop" };
        let mark = if ok == c.accept { "" } else { "  <-- MISMATCH" };
        if ok != c.accept {
            failures += 1;
        }
        println!(
            "{:<22} {:<9} {:<9} {:<9} {:<14} {}{}",
            format!("{} -> {}", c.from, c.to),
            c.probe.to_string(),
            verdict(c.accept),
            verdict(ok),
            format!("{}/{}", after.0 - before.0, after.1 - before.1),
            c.why,
            mark
        );
    }
    let st: Report = gw.status(&lab.gw)?;
    println!("\nPackets decided per policy:");
    for p in &st.policies {
        println!("  {:<32} {:>6} packets", p.policy, p.packets);
    }
    println!("\nDrops by reason:");
    for c in st.counters.iter().filter(|c| c.verdict == "drop") {
        println!(
            "  {:<16} {:<22} {:>6} packets",
            c.direction, c.reason, c.packets
        );
    }
    let exit = gw.stop()?;
    println!("\nGateway stopped ({exit}); removing the lab.");
    drop(lab);
    if failures > 0 {
        bail!("{failures} flows did not get the expected verdict");
    }
    println!(
        "All {} flows got the verdict the policy gives them.",
        SEED_MATRIX.len()
    );
    Ok(())
}
