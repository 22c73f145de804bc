//! Scenario "relay": TURN relaying, this project's relay against coturn, the same
//! configuration and the same load, alternating. Clients in their own namespace allocate, bind a
//! channel to a sink peer, and send ChannelData as fast as one sending thread can; the sink
//! counts what arrives. Also: allocations set up per second (each Allocate with its 401 round
//! trip), and the relay process's memory per allocation.
//!
//! ```text
//!  clients 198.18.30.2 ── c0 198.18.30.1:3478 [relay] p0 198.18.31.1 ── sink 198.18.31.2:5000
//! ```
//! Three contenders: this relay with bound channels in XDP (generic mode: the lab's veths), the
//! same relay in userspace only, and coturn.

use std::{
    fmt::Write as _,
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use gateway_relay::client::TurnClient;
use gateway_testkit::netns::{Netns, veth};
use serde::{Deserialize, Serialize};

use crate::{alternate::alternate, contenders::Contender, stats::Summary};

const CLIENTS: usize = 8;
const SINK: &str = "198.18.31.2:5000";
const RELAY: &str = "198.18.30.1:3478";
pub const CONTENDERS: [Contender; 3] = [
    Contender::RelayGatewayXdp,
    Contender::RelayGateway,
    Contender::RelayCoturn,
];

#[derive(Debug, Serialize, Deserialize)]
pub struct RelayRow {
    pub contender: Contender,
    pub label: String,
    pub kpps_64: Summary,
    pub kpps_1200: Summary,
    pub gbps_1200: Summary,
    pub allocations_per_s: Summary,
    pub kib_per_allocation: Summary,
    pub error: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RelayBench {
    pub clients: usize,
    pub seconds: u32,
    pub allocations: usize,
    pub rows: Vec<RelayRow>,
}

struct Topo {
    relay: Netns,
    client: Netns,
    peer: Netns,
    dir: std::path::PathBuf,
}

impl Topo {
    fn create() -> anyhow::Result<Topo> {
        gateway_testkit::netns::remove_stale("gwrbench");
        let id = format!("gwrbench{}", std::process::id());
        let t = Topo {
            relay: Netns::create(&format!("{id}-relay"))?,
            client: Netns::create(&format!("{id}-client"))?,
            peer: Netns::create(&format!("{id}-peer"))?,
            dir: std::env::temp_dir().join(&id),
        };
        std::fs::create_dir_all(&t.dir)?;
        veth(&t.relay, "c0", &t.client, "eth0")?;
        veth(&t.relay, "p0", &t.peer, "eth0")?;
        t.relay
            .ip(&["addr", "add", "198.18.30.1/24", "dev", "c0"])?;
        t.relay
            .ip(&["addr", "add", "198.18.31.1/24", "dev", "p0"])?;
        t.client
            .ip(&["addr", "add", "198.18.30.2/24", "dev", "eth0"])?;
        t.peer
            .ip(&["addr", "add", "198.18.31.2/24", "dev", "eth0"])?;
        // The XDP path's route lookups need forwarding interfaces; a firewall drops what the
        // kernel itself would forward, as on a real relay.
        for dev in ["c0", "p0"] {
            t.relay
                .sysctl(&format!("net.ipv4.conf.{dev}.forwarding"), "1")?;
        }
        t.relay.exec(&["nft", "add table inet fw; add chain inet fw forward { type filter hook forward priority 0; policy drop; }"])?;
        // Clients and peers send full UDP checksums, as frames from a wire carry: a veth
        // otherwise hands the relay checksums only begun, which the XDP path leaves to
        // userspace. The same for every contender.
        for ns in [&t.client, &t.peer] {
            ns.exec(&["ethtool", "-K", "eth0", "tx", "off"])?;
        }
        Ok(t)
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Server {
    fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("VmRSS")
    }
}

/// The relay contender `c` in `ns`, configured alike for every contender: one realm and user,
/// the same port range, UDP only, listening on `listen_ip`:3478 and relaying from `relay_ip`;
/// `xdp` is this relay's XDP section (empty: none). Shared with the relay-pps scenario.
pub fn spawn(
    c: Contender,
    ns: &Netns,
    listen_ip: &str,
    relay_ip: &str,
    xdp: &str,
    dir: &std::path::Path,
) -> anyhow::Result<Child> {
    Ok(match c {
        Contender::RelayGateway | Contender::RelayGatewayXdp => {
            let cfg = dir.join("relay.yaml");
            let xdp = if c == Contender::RelayGatewayXdp {
                xdp
            } else {
                ""
            };
            std::fs::write(
                &cfg,
                format!(
                    "listen: [{listen_ip}:3478]\nrelay_ip: {relay_ip}\nrealm: lab.example\nusers:\n  alice: wonderland\nmin_port: 50000\nmax_port: 59999\n{xdp}"
                ),
            )?;
            ns.command(
                crate::management::gateway_binary()?
                    .to_str()
                    .context("path")?,
            )
            .args(["relay", "serve", "--config", cfg.to_str().context("path")?])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?
        }
        _ => ns
            .command("turnserver")
            .args([
                "-n",
                &format!("--listening-ip={listen_ip}"),
                "--listening-port=3478",
                &format!("--relay-ip={relay_ip}"),
                "--realm=lab.example",
                "--lt-cred-mech",
                "--user=alice:wonderland",
                "--min-port=50000",
                "--max-port=59999",
                "--no-tcp",
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                "--no-tcp-relay",
                "--simple-log",
                "--log-file=/dev/null",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("turnserver (apt install coturn)")?,
    })
}

/// Starts contender `c` in the relay namespace; up when a Binding is answered.
fn start(c: Contender, topo: &Topo) -> anyhow::Result<Server> {
    let child = spawn(
        c,
        &topo.relay,
        "198.18.30.1",
        "198.18.31.1",
        "xdp:\n  interfaces: [c0, p0]\n  attach: xdp-generic\n",
        &topo.dir,
    )?;
    let server = Server(child);
    // Up when a Binding is answered.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = topo.client.run(|| -> bool {
            let Ok(c) = TurnClient::new(
                "198.18.30.2:0".parse().expect("constant"),
                RELAY.parse().expect("constant"),
                "alice",
                "wonderland",
            ) else {
                return false;
            };
            let m = stun_codec::Message::new(
                stun_codec::MessageClass::Request,
                stun_codec::rfc5389::methods::BINDING,
                stun_codec::TransactionId::new([3; 12]),
            );
            c.exchange(m).is_ok()
        })?;
        if ok {
            return Ok(server);
        }
        if Instant::now() > deadline {
            bail!("{} did not answer within 10 s", c.label());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends ChannelData of `size` bytes from `CLIENTS` allocations for `seconds`; the received
/// packets per second at the sink.
fn throughput(topo: &Topo, size: usize, seconds: u32) -> anyhow::Result<f64> {
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sink = {
        let (received, stop) = (received.clone(), stop.clone());
        let sock = topo.peer.run(|| std::net::UdpSocket::bind(SINK))??;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if sock.recv_from(&mut buf).is_ok() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let clients = topo
        .client
        .run(move || -> anyhow::Result<Vec<TurnClient>> {
            (0..CLIENTS)
                .map(|i| {
                    let mut c = TurnClient::new(
                        "198.18.30.2:0".parse()?,
                        RELAY.parse()?,
                        "alice",
                        "wonderland",
                    )?;
                    c.allocate()?;
                    c.channel_bind(0x4000 + i as u16, SINK.parse()?)?;
                    Ok(c)
                })
                .collect()
        })??;
    let payload = vec![0x5au8; size];
    let before = received.load(Ordering::Relaxed);
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds as u64);
    let mut i = 0usize;
    while Instant::now() < until {
        for _ in 0..64 {
            let c = &clients[i % CLIENTS];
            let _ = c.send_channel(0x4000 + (i % CLIENTS) as u16, &payload);
            i += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    let got = received.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    let _ = sink.join();
    release(topo, clients)?;
    if got == 0 {
        bail!("nothing arrived at the sink");
    }
    Ok(got as f64 / elapsed)
}

/// Sequential allocations (each with its 401 round trip): per second, and the relay's memory
/// per allocation.
fn allocations(topo: &Topo, server: &Server, n: usize) -> anyhow::Result<(f64, f64)> {
    let rss0 = server.rss_kib()?;
    let started = Instant::now();
    let clients = topo
        .client
        .run(move || -> anyhow::Result<Vec<TurnClient>> {
            (0..n)
                .map(|_| {
                    let mut c = TurnClient::new(
                        "198.18.30.2:0".parse()?,
                        RELAY.parse()?,
                        "alice",
                        "wonderland",
                    )?;
                    c.allocate()?;
                    Ok(c)
                })
                .collect()
        })??;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(200));
    let per = (server.rss_kib()?.saturating_sub(rss0)) as f64 / n as f64;
    release(topo, clients)?;
    Ok((rate, per))
}

/// Ends the clients' allocations, as a client that is done does (their 5-tuples may come again).
fn release(topo: &Topo, clients: Vec<TurnClient>) -> anyhow::Result<()> {
    topo.client
        .run(move || clients.into_iter().try_for_each(|mut c| c.release()))?
}

struct Sample {
    kpps_64: f64,
    kpps_1200: f64,
    allocs: f64,
    kib: f64,
}

pub fn run(quick: bool) -> anyhow::Result<RelayBench> {
    let trials = if quick { 1 } else { 5 };
    let seconds = if quick { 2 } else { 5 };
    let n_alloc = if quick { 100 } else { 500 };
    let topo = Topo::create()?;
    let outcomes = alternate(
        "bench relay",
        &CONTENDERS,
        |c| c.label().to_string(),
        trials,
        |c| {
            let server = start(c, &topo)?;
            let kpps_64 = throughput(&topo, 64, seconds)? / 1e3;
            let kpps_1200 = throughput(&topo, 1200, seconds)? / 1e3;
            let (allocs, kib) = allocations(&topo, &server, n_alloc)?;
            Ok(Sample {
                kpps_64,
                kpps_1200,
                allocs,
                kib,
            })
        },
        |s| {
            format!(
                "{:.0} kpps (64 B), {:.0} kpps (1200 B), {:.0} allocations/s, {:.1} KiB/allocation",
                s.kpps_64, s.kpps_1200, s.allocs, s.kib
            )
        },
    );
    let rows = CONTENDERS
        .iter()
        .zip(outcomes)
        .map(|(&c, o)| RelayRow {
            contender: c,
            label: c.label().to_string(),
            kpps_64: Summary::of_or_zero(o.samples.iter().map(|s| s.kpps_64).collect()),
            kpps_1200: Summary::of_or_zero(o.samples.iter().map(|s| s.kpps_1200).collect()),
            gbps_1200: Summary::of_or_zero(
                o.samples
                    .iter()
                    .map(|s| s.kpps_1200 * 1e3 * 1200.0 * 8.0 / 1e9)
                    .collect(),
            ),
            allocations_per_s: Summary::of_or_zero(o.samples.iter().map(|s| s.allocs).collect()),
            kib_per_allocation: Summary::of_or_zero(o.samples.iter().map(|s| s.kib).collect()),
            error: o.error,
        })
        .collect();
    Ok(RelayBench {
        clients: CLIENTS,
        seconds,
        allocations: n_alloc,
        rows,
    })
}

pub fn markdown(md: &mut String, b: &RelayBench) {
    let _ = writeln!(
        md,
        "## TURN relay: this relay against coturn ({} clients)\n",
        b.clients
    );
    let _ = writeln!(
        md,
        "Each contender in the relay's namespace with the same realm, user, port range and UDP only (coturn: `turnserver -n --lt-cred-mech ... --no-tcp --no-tls --no-dtls`). {} clients allocate and bind a channel to one sink peer; one thread sends ChannelData round-robin for {} s; packets counted where they arrive (the sink). Allocations: {} sequential Allocates with their 401 round trip; memory: the relay process's RSS growth over them. The XDP contender forwards bound channels in generic (skb) XDP, which the lab's veth pairs need for redirects between them; native XDP on real NICs skips the skb. Clients and the sink send with transmit checksum offload off (full checksums, as from a wire), for every contender. Median (min–max).\n",
        b.clients, b.seconds, b.allocations
    );
    let _ = writeln!(
        md,
        "| contender | 64 B (kpps) | 1200 B (kpps) | 1200 B (Gbit/s) | allocations/s | KiB/allocation |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
    for r in &b.rows {
        if let Some(e) = &r.error {
            let _ = writeln!(md, "| {} | not measured: {e} | | | | |", r.label);
            continue;
        }
        let s = |x: &Summary, p: usize| format!("{:.p$} ({:.p$}–{:.p$})", x.median, x.min, x.max);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            r.label,
            s(&r.kpps_64, 0),
            s(&r.kpps_1200, 0),
            s(&r.gbps_1200, 2),
            s(&r.allocations_per_s, 0),
            s(&r.kib_per_allocation, 1)
        );
    }
    let find = |c: Contender| {
        b.rows
            .iter()
            .find(|r| r.contender == c && r.error.is_none())
    };
    if let (Some(g), Some(c)) = (find(Contender::RelayGateway), find(Contender::RelayCoturn)) {
        let _ = writeln!(
            md,
            "\nUserspace against coturn: {:.2}x at 64 B, {:.2}x at 1200 B, {:.2}x allocations/s.",
            g.kpps_64.median / c.kpps_64.median,
            g.kpps_1200.median / c.kpps_1200.median,
            g.allocations_per_s.median / c.allocations_per_s.median
        );
    }
    if let (Some(x), Some(c)) = (
        find(Contender::RelayGatewayXdp),
        find(Contender::RelayCoturn),
    ) {
        let r = x.kpps_64.median / c.kpps_64.median;
        let _ = writeln!(
            md,
            "XDP (generic) against coturn: {r:.2}x at 64 B, {:.2}x at 1200 B. Target XDP ≥ 10x coturn's packet rate: {}. (One client-side sending thread feeds every contender here: a contender faster than it cannot show more than the sender's rate; the ≥ 85% of a no-op XDP_TX ceiling target needs an in-kernel generator and native XDP: see the next section.)\n",
            x.kpps_1200.median / c.kpps_1200.median,
            if r >= 10.0 { "met" } else { "NOT met" }
        );
    }
}
