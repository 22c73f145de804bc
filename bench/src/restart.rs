//! Scenario "restart": the real `gateway run` is stopped (SIGTERM) or killed (SIGKILL) and
//! started again while traffic of established flows crosses it. Its pinned data plane keeps
//! judging and forwarding (XDP, conntrack on) without the process, and the next run adopts it
//! and swaps its programs in through link updates. Every frame that reaches the gateway must
//! arrive at the sink (counted by signature), and none may pass without being judged: the
//! gateway's own counters live in the pinned maps and count across restarts. A trial without a
//! restart shows what the harness itself loses before the gateway (the generator's XDP_TX into
//! a veth ring now and then drops a frame of a burst).

use gateway::status::Report;
use std::{
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use gateway_dataplane::pins::{PinDir, mount_bpffs, unmount_bpffs};
use gateway_testkit::process::{GatewayProcess, LAB_METRICS_ADDR};
use serde::{Deserialize, Serialize};

use crate::{
    generator::Generator,
    stats::Summary,
    swap::paced_send,
    topo::{SINK_ADDR, Topo},
};

const FLOWS: u16 = 64;

#[derive(Debug, Serialize, Deserialize)]
pub struct RestartTrial {
    /// "none", "sigterm" or "sigkill".
    pub kind: String,
    pub sent: u64,
    /// Frames the gateway's LAN program judged (its pinned counters).
    #[serde(default)]
    pub judged: u64,
    pub received: u64,
    /// From starting the new process to its /status answering (it has adopted the data plane).
    pub takeover_ms: f64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Restart {
    pub flows: u16,
    pub rate_pps: f64,
    pub seconds: f64,
    pub takeover_ms: Summary,
    /// Frames the gateway judged that did not arrive, over the trials with a restart.
    pub lost_during_restarts: u64,
    pub lost_without_restart: u64,
    /// Frames that arrived without the gateway having judged them (enforcement gaps).
    #[serde(default)]
    pub unjudged: u64,
    /// Frames the generator sent that never reached the gateway (the harness's own loss).
    #[serde(default)]
    pub lost_before_gateway: u64,
    pub trials: Vec<RestartTrial>,
}

/// A private bpffs for the gateway's pins, unmounted (detaching what is pinned) on drop.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = PinDir::remove_all(&self.0.join("gateway"));
        unmount_bpffs(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(dir: &std::path::Path, pins: &std::path::Path) -> anyhow::Result<PathBuf> {
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        "groups:\n  generator: [198.18.0.0/16]\n  sink: [198.19.0.0/24]\npolicies:\n  - name: generator-to-sink\n    source_groups: [generator]\n    destination_groups: [sink]\n    action: accept\n    protocol: udp\n",
    )?;
    let cfg = format!(
        "policy: {}\nmetrics_addr: {LAB_METRICS_ADDR}\npin_dir: {}\noverlay:\n  ipv4: 198.19.0.0/16\ninterfaces:\n  lan:\n    - name: d0\n      forward: xdp\n    - name: d1\n      forward: xdp\n",
        policy.display(),
        pins.join("gateway").display()
    );
    let path = dir.join("gateway.yaml");
    std::fs::write(&path, cfg)?;
    Ok(path)
}

/// What the gateway counted at the LAN hook so far (its counters live in the pinned maps and
/// carry across restarts): [accepted, forwarded in XDP, dropped].
fn judged(gw: &GatewayProcess, topo: &Topo) -> anyhow::Result<[u64; 3]> {
    let st: Report = gw.status(&topo.dut)?;
    let mut out = [0u64; 3];
    for c in st.counters.iter().filter(|c| c.direction == "lan") {
        match c.verdict.as_str() {
            "accept" => out[0] += c.packets,
            "forwarded" => out[1] += c.packets,
            "drop" => out[2] += c.packets,
            _ => {}
        }
    }
    Ok(out)
}

pub fn run(quick: bool) -> anyhow::Result<Restart> {
    let topo = Topo::create()?;
    let mut generator = Generator::new(&topo, crate::pps::FRAME_BYTES)?;
    let dir = std::env::temp_dir().join(format!("gwbench-restart{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let pins = Pins(dir.join("bpffs"));
    mount_bpffs(&pins.0)?;
    let cfg = config(&dir, &pins.0)?;
    let bin = crate::management::gateway_binary()?;
    let log = |n: usize| dir.join(format!("gateway{n}.log"));
    let mut gw = Some(
        GatewayProcess::start(&bin, &topo.dut, &cfg, &log(0)).context("starting the gateway")?,
    );
    let flows: Vec<(Ipv4Addr, u16)> = (0..FLOWS)
        .map(|i| (Ipv4Addr::new(198, 18, 1, i as u8), 5000 + i))
        .collect();
    generator.set_flows(&flows, 16)?;
    anyhow::ensure!(
        SINK_ADDR.starts_with("198.19.0."),
        "the policy names the sink's /24"
    );

    let rate = if quick { 150_000.0 } else { 200_000.0 };
    let seconds = if quick { 1.5 } else { 3.0 };
    let total = (rate * seconds) as u64;
    let restarts = if quick { 2 } else { 6 };
    let mut trials = Vec::new();
    for t in 0..=restarts {
        let kind = match t {
            0 => "none",
            t if t % 2 == 1 => "sigterm",
            _ => "sigkill",
        };
        let before = generator.sink_packets()?;
        let judged_before = judged(gw.as_ref().expect("a gateway runs"), &topo)?;
        let (sent, takeover_ms) = std::thread::scope(|s| -> anyhow::Result<(u64, f64)> {
            let sender = s.spawn(|| paced_send(&mut generator, &topo, total, rate));
            let mut takeover_ms = 0.0;
            if kind != "none" {
                std::thread::sleep(Duration::from_secs_f64(seconds / 3.0));
                let old = gw.take().expect("a gateway runs");
                if kind == "sigterm" {
                    old.stop()?
                } else {
                    old.crash()?
                };
                let started = Instant::now();
                gw = Some(GatewayProcess::start(&bin, &topo.dut, &cfg, &log(t))?);
                takeover_ms = started.elapsed().as_secs_f64() * 1e3;
            }
            let sent = sender
                .join()
                .map_err(|_| anyhow::anyhow!("sender thread panicked"))??;
            Ok((sent, takeover_ms))
        })?;
        std::thread::sleep(Duration::from_millis(300));
        let received = generator.sink_packets()? - before;
        let judged_after = judged(gw.as_ref().expect("a gateway runs"), &topo)?;
        let d = |i: usize| judged_after[i] - judged_before[i];
        // Judged: accepted or dropped (a drop of these allowed flows would be a loss too).
        let judged = d(0) + d(2);
        eprintln!(
            "bench restart: trial {t} ({kind}): sent {sent}, received {received}, takeover {takeover_ms:.0} ms; the gateway judged {judged} (forwarded in XDP {}, dropped {})",
            d(1),
            d(2)
        );
        anyhow::ensure!(
            kind == "none"
                || gw
                    .as_ref()
                    .is_some_and(|g| g.log_text().contains("adopted the pinned data plane")),
            "the new gateway did not adopt the pinned data plane"
        );
        trials.push(RestartTrial {
            kind: kind.into(),
            sent,
            judged,
            received,
            takeover_ms,
        });
    }
    if let Some(g) = gw.take() {
        g.stop()?;
    }
    let lost = |restart: bool| {
        trials
            .iter()
            .filter(|t| (t.kind != "none") == restart)
            .map(|t| t.judged.saturating_sub(t.received))
            .sum()
    };
    let strays = generator.sink_strays()?;
    eprintln!(
        "bench restart: {strays} frames without the generator's signature reached the sink (not counted)"
    );
    drop(pins);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Restart {
        flows: FLOWS,
        rate_pps: rate,
        seconds,
        takeover_ms: Summary::of(
            trials
                .iter()
                .filter(|t| t.kind != "none")
                .map(|t| t.takeover_ms)
                .collect(),
        ),
        lost_during_restarts: lost(true),
        lost_without_restart: lost(false),
        unjudged: trials
            .iter()
            .map(|t| t.received.saturating_sub(t.judged))
            .sum(),
        lost_before_gateway: trials.iter().map(|t| t.sent.saturating_sub(t.judged)).sum(),
        trials,
    })
}

pub fn markdown(md: &mut String, r: &Restart) {
    use std::fmt::Write as _;
    let restarts = r.trials.iter().filter(|t| t.kind != "none").count();
    let sent: u64 = r
        .trials
        .iter()
        .filter(|t| t.kind != "none")
        .map(|t| t.sent)
        .sum();
    let _ = writeln!(md, "## Restart under load (fail-static)\n");
    let _ = writeln!(
        md,
        "The real `gateway run` (conntrack on, XDP forwarding, data plane pinned on bpffs) carries {} UDP flows at {:.0} kpps (64-byte frames) for {:.1} s per trial; a third of the way in it is stopped (SIGTERM) or killed (SIGKILL), alternating, and started again at once. Frames counted at the sink by the generator's signature, so a stray frame cannot offset the count.\n",
        r.flows,
        r.rate_pps / 1e3,
        r.seconds
    );
    let _ = writeln!(md, "| measure | value |");
    let _ = writeln!(md, "|---|---:|");
    let _ = writeln!(
        md,
        "| frames of established flows the gateway took in but did not deliver, during {restarts} restarts ({sent} sent) | {} |",
        r.lost_during_restarts
    );
    let _ = writeln!(
        md,
        "| the same in the trial without a restart | {} |",
        r.lost_without_restart
    );
    let _ = writeln!(
        md,
        "| frames that arrived without being judged (an enforcement gap), all trials | {} |",
        r.unjudged
    );
    let _ = writeln!(
        md,
        "| frames the harness lost before the gateway (generator XDP_TX into the veth), all trials | {} |",
        r.lost_before_gateway
    );
    let _ = writeln!(
        md,
        "| new process up and adopted (start to /status), median (min–max) | {:.0} ms ({:.0}–{:.0}) |",
        r.takeover_ms.median, r.takeover_ms.min, r.takeover_ms.max
    );
    let met = r.lost_during_restarts == 0 && r.unjudged == 0;
    let _ = writeln!(
        md,
        "\nTarget: zero packets of established flows lost across restarts, and none unpoliced: {}.\n",
        if met { "met" } else { "NOT met" }
    );
}
