//! Scenario "relay-pps": the relay's packet rate with an in-kernel generator, so the sender is
//! not the limit (the "relay" scenario's one client thread is). One client allocates and binds
//! a channel to the sink from the generator's address; the generator then sends that client's
//! ChannelData at line rate (BPF_PROG_RUN live frames, XDP_TX into the DUT); the sink counts
//! the unwrapped datagrams where they arrive. Contenders: the no-op XDP redirect between the
//! same two interfaces (the ceiling: a relay forwards from one to the other), this relay with
//! bound channels in native XDP, the same relay in userspace, and coturn.
//!
//! ```text
//!  gen: g0 198.18.0.1:10000 ── d0 198.18.0.254:3478 [relay] d1 198.19.0.254 ── s0 198.19.0.1:5000
//! ```
//!
//! Then the same on one interface, as a relay with one NIC runs (the issue's XDP_TX ceiling):
//! the peer is a second address of the generator's link, so the relay sends back out of d0
//! (XDP_TX), and a sink on g0 counts. Contenders: a no-op XDP_TX on d0 and the XDP relay.
//!
//! ```text
//!  gen: g0 198.18.0.1:10000, 198.18.0.2:5000 (peer) ── d0 198.18.0.254:3478 [relay, relayed
//!       addresses on d0 too]
//! ```

use std::{
    cell::RefCell,
    fmt::Write as _,
    process::Child,
    time::{Duration, Instant},
};

use anyhow::bail;
use bench_common::{GEN_SIGNATURE, GEN_SIGNATURE_AT};
use gateway_relay::client::TurnClient;
use gateway_testkit::packets::{L4, Spec};
use serde::{Deserialize, Serialize};

use crate::{
    alternate::alternate,
    contenders::Contender,
    generator::{DutXdp, Generator, RateMethod, TRIAL_FRAMES},
    stats::Summary,
    topo::{GEN_ADDR, SINK_ADDR, Topo},
};

const LISTEN: &str = "198.18.0.254:3478";
const RELAY_IP: &str = "198.19.0.254";
/// The generator's source port for its one flow (its `sport_base`).
const CLIENT_PORT: u16 = 10_000;
const SINK_PORT: u16 = 5000;
const CHANNEL: u16 = 0x4000;

/// The peer of the one-interface layout: on the generator's link, reached back out of d0.
const PEER_ON_LINK: &str = "198.18.0.2";

/// Where the relay's client and peer are.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// The client behind d0, the peer behind d1: the relay redirects between them.
    TwoInterfaces,
    /// Both on d0's link: the relay sends back out of the interface it received on (XDP_TX).
    OneInterface,
}

impl Layout {
    /// Where the client's channel leads.
    fn peer(self) -> &'static str {
        match self {
            Layout::TwoInterfaces => SINK_ADDR,
            Layout::OneInterface => PEER_ON_LINK,
        }
    }

    /// The no-op ceiling of a relay in this layout.
    fn ceiling(self) -> DutXdp {
        match self {
            Layout::TwoInterfaces => DutXdp::Redirect,
            Layout::OneInterface => DutXdp::Tx,
        }
    }

    /// The DUT's receive processing, and where the sink counts, on the DUT's core.
    fn dedicate_dut_core(self, topo: &Topo) -> anyhow::Result<()> {
        match self {
            Layout::TwoInterfaces => topo.dedicate_dut_core(),
            Layout::OneInterface => topo.dedicate_dut_core_one_link(),
        }
    }
}

/// The contenders of the one-interface layout.
pub const ONE_LINK_CONTENDERS: [Contender; 3] = [
    Contender::NoopTx,
    Contender::UnwrappingTx,
    Contender::RelayGatewayXdp,
];

pub const CONTENDERS: [Contender; 5] = [
    Contender::NoopRedirect,
    Contender::ReadingRedirect,
    Contender::RelayGatewayXdp,
    Contender::RelayGateway,
    Contender::RelayCoturn,
];

#[derive(Debug, Serialize, Deserialize)]
pub struct Row {
    pub contender: Contender,
    pub label: String,
    /// Per frame size: Mpps arrived and the loss.
    pub mpps: Vec<Summary>,
    pub loss: Vec<Summary>,
    /// Per frame size: Mpps arrived in the same trials at full overload alone (absent from
    /// runs before maximum forwarding rates).
    #[serde(default)]
    pub overloaded_mpps: Vec<Summary>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RelayPps {
    /// How the rates were measured (its fields sit at this level in the JSON).
    #[serde(flatten)]
    pub method: RateMethod,
    /// Frame sizes on the wire (Ethernet, without FCS) of the client's ChannelData.
    pub frame_sizes: Vec<usize>,
    pub frames: u32,
    pub rows: Vec<Row>,
    /// The one-interface layout (absent from runs made before it was measured).
    #[serde(default)]
    pub one_interface: Vec<Row>,
    /// Per layout, trial and frame size, the relay with its layout's ceiling measured right
    /// beside it (absent from runs made before it was measured).
    #[serde(default)]
    pub beside_ceiling: Vec<BesideCeiling>,
}

/// One frame size of one trial: the relay, then the layout's no-op ceiling on the same links,
/// then the relay again (started afresh, its channel bound again), back to back. The VM's
/// speed moves between states within a minute (see RESULTS.md), and the alternating
/// contenders of a trial are a minute or more apart; these three are seconds apart.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct BesideCeiling {
    /// The one-interface layout (its ceiling the no-op XDP_TX); else the two interfaces (the
    /// no-op redirect d0 → d1).
    pub one_interface: bool,
    pub frame_bytes: usize,
    /// Mpps arrived.
    pub relay: f64,
    pub ceiling: f64,
    pub relay_again: f64,
}

impl BesideCeiling {
    /// The relay's rate (the mean of its two measurements) over the ceiling's between them.
    pub fn ratio(&self) -> f64 {
        (self.relay + self.relay_again) / 2.0 / self.ceiling
    }
}

fn label(c: Contender) -> &'static str {
    match c {
        Contender::NoopRedirect => "no-op XDP redirect d0 → d1 (ceiling)",
        Contender::ReadingRedirect => {
            "XDP redirect d0 → d1 that reads the IP header first (a forwarder's floor)"
        }
        Contender::RelayGatewayXdp => "this relay, bound channels in XDP (native)",
        Contender::NoopTx => "no-op XDP_TX back out of d0 (ceiling on one interface)",
        Contender::UnwrappingTx => {
            "XDP_TX back out of d0 that strips ChannelData's header and writes the datagram's headers first (a relay's floor)"
        }
        other => other.label(),
    }
}

/// The client's ChannelData frame: Ethernet, IPv4, UDP from the generator's address and port to
/// the relay, the channel header, then the data (which starts with the generator's signature,
/// so the sink recognises the datagram the relay unwraps). Full checksums.
fn channel_data_frame(frame_len: usize) -> Vec<u8> {
    let data_len = frame_len
        .saturating_sub(14 + 20 + 8 + 4)
        .max(GEN_SIGNATURE.len());
    let mut data = vec![0x5a; data_len];
    data[..GEN_SIGNATURE.len()].copy_from_slice(&GEN_SIGNATURE);
    let mut udp = Vec::with_capacity(8 + 4 + data_len);
    udp.extend_from_slice(&CLIENT_PORT.to_be_bytes());
    udp.extend_from_slice(&3478u16.to_be_bytes());
    udp.extend_from_slice(&((8 + 4 + data_len) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&CHANNEL.to_be_bytes());
    udp.extend_from_slice(&(data_len as u16).to_be_bytes());
    udp.extend_from_slice(&data);
    let mut spec = Spec::new(
        GEN_ADDR,
        "198.18.0.254",
        L4::Udp {
            sport: CLIENT_PORT,
            dport: 3478,
        },
    );
    spec.raw_l4 = Some(udp);
    spec.l4_checksum = true;
    let frame = spec.build();
    // Unwrapped, the data lands where the sink looks for the signature.
    debug_assert_eq!(&frame[GEN_SIGNATURE_AT + 4..][..6], &GEN_SIGNATURE);
    frame
}

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The relay's configuration folder, removed with the run (also when it fails).
struct ConfigDir(std::path::PathBuf);
impl Drop for ConfigDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts a relay contender in the DUT, as the relay scenario configures it; on one interface,
/// its relayed addresses are the listening address's, as on a host with one NIC.
fn start(
    c: Contender,
    topo: &Topo,
    dir: &std::path::Path,
    layout: Layout,
) -> anyhow::Result<Server> {
    let (relay_ip, xdp) = match layout {
        Layout::TwoInterfaces => (
            RELAY_IP,
            "xdp:\n  interfaces: [d0, d1]\n  attach: xdp-native\n",
        ),
        Layout::OneInterface => (
            "198.18.0.254",
            "xdp:\n  interfaces: [d0]\n  attach: xdp-native\n",
        ),
    };
    Ok(Server(crate::relay::spawn(
        c,
        &topo.dut,
        "198.18.0.254",
        relay_ip,
        xdp,
        dir,
    )?))
}

/// Allocates and binds the channel from the generator's address and port (retrying while the
/// relay starts); the client stays alive for the measurement.
fn bind(topo: &Topo, peer: &'static str) -> anyhow::Result<TurnClient> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = topo.gen_ns.run(move || -> anyhow::Result<TurnClient> {
            let mut c = TurnClient::new(
                format!("{GEN_ADDR}:{CLIENT_PORT}").parse()?,
                LISTEN.parse()?,
                "alice",
                "wonderland",
            )?;
            c.allocate()?;
            c.channel_bind(CHANNEL, format!("{peer}:{SINK_PORT}").parse()?)?;
            Ok(c)
        })?;
        match r {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline => bail!("no allocation and channel: {e:#}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// One contender, every frame size: (Mpps arrived, loss) per size. The XDP relay also has its
/// layout's ceiling measured beside it ([`BesideCeiling`], into `beside`).
#[allow(clippy::too_many_arguments)]
fn trial(
    c: Contender,
    layout: Layout,
    topo: &Topo,
    dir: &std::path::Path,
    g: &mut Generator,
    frame_sizes: &[usize],
    frames: u32,
    beside: &RefCell<Vec<BesideCeiling>>,
) -> anyhow::Result<Vec<(f64, f64, f64)>> {
    let mut out = Vec::new();
    for &size in frame_sizes {
        g.set_frame(channel_data_frame(size))?;
        // The generator's frames reach d0 only with an XDP program there: the ceiling's, the
        // relay's own, or a pass for the userspace contenders.
        let program = match c {
            Contender::NoopRedirect => DutXdp::Redirect,
            Contender::ReadingRedirect => DutXdp::RedirectReading,
            Contender::NoopTx => DutXdp::Tx,
            Contender::UnwrappingTx => DutXdp::TxUnwrapping,
            _ => DutXdp::Pass,
        };
        let redirect = program != DutXdp::Pass;
        let link = match c {
            Contender::RelayGatewayXdp => None,
            _ => Some(g.attach_dut(topo, program)?),
        };
        let server = (!redirect)
            .then(|| start(c, topo, dir, layout))
            .transpose()?;
        let client = (!redirect).then(|| bind(topo, layout.peer())).transpose()?;
        layout.dedicate_dut_core(topo)?;
        // The ceiling forwards the client's frames as they are (no signature where the sink
        // looks): every frame that arrives counts.
        let count = if redirect {
            Generator::sink_all
        } else {
            Generator::sink_packets
        };
        let m = g.max_forwarding_rate(topo, frames, count);
        drop(client);
        drop(server);
        if let Some(link) = link {
            g.detach_dut(topo, program, link)?;
        }
        let m = m?;
        if m.arrived == 0 {
            bail!("nothing arrived at the sink");
        }
        if c == Contender::RelayGatewayXdp {
            match ceiling_beside_relay(layout, topo, dir, g, frames) {
                Ok((ceiling, again)) => {
                    let b = BesideCeiling {
                        one_interface: layout == Layout::OneInterface,
                        frame_bytes: size,
                        relay: m.pps() / 1e6,
                        ceiling,
                        relay_again: again,
                    };
                    eprintln!(
                        "bench relay-pps, {}{size} B, beside the relay ({:.3} Mpps): the ceiling {ceiling:.3} Mpps, the relay again {again:.3} Mpps: {:.1}%",
                        if b.one_interface {
                            "one interface, "
                        } else {
                            ""
                        },
                        b.relay,
                        b.ratio() * 100.0
                    );
                    beside.borrow_mut().push(b);
                }
                Err(e) => eprintln!("bench relay-pps: the ceiling beside the relay: {e:#}"),
            }
        }
        out.push((m.pps() / 1e6, m.loss(), m.overloaded_pps() / 1e6));
    }
    Ok(out)
}

/// Right after the relay was measured (and stopped): the layout's no-op ceiling (the redirect
/// d0 → d1, or XDP_TX back out of d0), then the relay started again, its channel bound again,
/// and measured: Mpps arrived of each. The generator's frame is the relay's, as set for the
/// size measured.
fn ceiling_beside_relay(
    layout: Layout,
    topo: &Topo,
    dir: &std::path::Path,
    g: &mut Generator,
    frames: u32,
) -> anyhow::Result<(f64, f64)> {
    let program = layout.ceiling();
    let link = g.attach_dut(topo, program)?;
    let ceiling = layout
        .dedicate_dut_core(topo)
        .and_then(|_| g.max_forwarding_rate(topo, frames, Generator::sink_all));
    g.detach_dut(topo, program, link)?;
    let ceiling = ceiling?;
    let server = start(Contender::RelayGatewayXdp, topo, dir, layout)?;
    let client = bind(topo, layout.peer())?;
    layout.dedicate_dut_core(topo)?;
    let again = g.max_forwarding_rate(topo, frames, Generator::sink_packets)?;
    drop(client);
    drop(server);
    if ceiling.arrived == 0 || again.arrived == 0 {
        bail!("nothing arrived at the sink");
    }
    Ok((ceiling.pps() / 1e6, again.pps() / 1e6))
}

pub fn run(quick: bool) -> anyhow::Result<RelayPps> {
    let topo = Topo::create()?;
    let dir = ConfigDir(std::env::temp_dir().join(format!("gwrpps{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    // The relay's route lookups in XDP need forwarding interfaces; the kernel itself forwards
    // nothing (a relay is not a router).
    topo.dut_sh("nft add table inet fw; nft add chain inet fw forward '{ type filter hook forward priority 0; policy drop; }'")?;
    let frame_sizes = vec![64usize, 1242];
    let mut generator = Generator::with_frame(&topo, channel_data_frame(frame_sizes[0]))?;
    generator.set_flows(&[(GEN_ADDR.parse()?, 3478)], 1)?;
    let trials = if quick { 2 } else { 5 };
    let frames = crate::profiling::frames(if quick { 500_000 } else { TRIAL_FRAMES });
    let beside = RefCell::new(Vec::new());
    // Every contender of a layout in each trial, alternating.
    let measure = |tag: &str, contenders: &[Contender], layout: Layout, g: &mut Generator| {
        let outcomes = alternate(
            tag,
            contenders,
            |c| label(c).to_string(),
            trials,
            |c| trial(c, layout, &topo, &dir.0, g, &frame_sizes, frames, &beside),
            |v| describe(v, &frame_sizes),
        );
        rows_of(outcomes, contenders, &frame_sizes)
    };
    let rows = measure(
        "bench relay-pps",
        &CONTENDERS,
        Layout::TwoInterfaces,
        &mut generator,
    );
    // One interface: the peer is a second address on the generator's link, its neighbour
    // known to the DUT (the sink on g0 passes ARP, but a permanent entry keeps it out of the
    // measurement), and g0 counts what comes back.
    topo.gen_ns
        .ip(&["addr", "add", &format!("{PEER_ON_LINK}/24"), "dev", "g0"])?;
    topo.dut.ip(&[
        "neigh",
        "replace",
        PEER_ON_LINK,
        "lladdr",
        &crate::topo::mac(crate::topo::MAC_G0),
        "dev",
        "d0",
        "nud",
        "permanent",
    ])?;
    let sink = generator.attach_gen_sink(&topo)?;
    let one_interface = measure(
        "bench relay-pps, one interface",
        &ONE_LINK_CONTENDERS,
        Layout::OneInterface,
        &mut generator,
    );
    generator.detach_gen_sink(&topo, sink)?;
    Ok(RelayPps {
        method: RateMethod::CURRENT,
        frame_sizes,
        frames,
        rows,
        one_interface,
        beside_ceiling: beside.into_inner(),
    })
}

/// A trial's figures for the log.
fn describe(v: &[(f64, f64, f64)], frame_sizes: &[usize]) -> String {
    v.iter()
        .zip(frame_sizes)
        .map(|((mpps, loss, _), n)| format!("{n} B: {mpps:.3} Mpps (loss {:.1}%)", loss * 100.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The rows of the report from each contender's trials (per frame size).
fn rows_of(
    outcomes: Vec<crate::alternate::Outcome<Vec<(f64, f64, f64)>>>,
    contenders: &[Contender],
    frame_sizes: &[usize],
) -> Vec<Row> {
    outcomes
        .into_iter()
        .zip(contenders)
        .map(|(o, &c)| {
            let per = |f: &dyn Fn(&(f64, f64, f64)) -> f64| -> Vec<Summary> {
                (0..frame_sizes.len())
                    .map(|i| Summary::of_or_zero(o.samples.iter().map(|s| f(&s[i])).collect()))
                    .collect()
            };
            Row {
                contender: c,
                label: label(c).to_string(),
                mpps: per(&|s| s.0),
                loss: per(&|s| s.1),
                overloaded_mpps: per(&|s| s.2),
                error: o.error,
            }
        })
        .collect()
}

/// The row of contender `c`, if it was measured.
fn measured(rows: &[Row], c: Contender) -> Option<&Row> {
    rows.iter().find(|x| x.contender == c && x.error.is_none())
}

/// The contenders' rates per frame size, one row each.
fn table(md: &mut String, rows: &[Row], frame_sizes: &[usize]) {
    let mut head = String::from("| contender |");
    let mut rule = String::from("|---|");
    for n in frame_sizes {
        let _ = write!(head, " {n} B (Mpps) | loss |");
        rule.push_str("---:|---:|");
    }
    let _ = writeln!(md, "{head}\n{rule}");
    for row in rows {
        if let Some(e) = &row.error {
            let _ = writeln!(
                md,
                "| {} | not measured: {} |",
                row.label,
                e.lines().next().unwrap_or("")
            );
            continue;
        }
        let mut line = format!("| {} |", row.label);
        for (m, l) in row.mpps.iter().zip(&row.loss) {
            let _ = write!(
                line,
                " {:.3} ({:.3}–{:.3}) | {:.1}% |",
                m.median,
                m.min,
                m.max,
                l.median * 100.0
            );
        }
        let _ = writeln!(md, "{line}");
    }
}

/// The relay's rate at frame size `i` against a ceiling's, and the 85% target: by medians,
/// and within each trial (the two run back to back), which drift between trials cannot fake;
/// the ceiling's own spread says how far any figure can be trusted. One decimal, so a ratio
/// just under the target does not print as the target.
fn against_ceiling(xdp: &Row, ceiling: &Row, i: usize, name: &str) -> String {
    let (by_medians, paired) = alternating_ratios(xdp, ceiling, i);
    format!(
        "XDP / {name} {} (target ≥ 85%: {}){}",
        alternating_text(xdp, ceiling, i),
        met(by_medians >= 0.85 && paired.median >= 0.85),
        overloaded_text(xdp, ceiling, i),
    )
}

/// The relay over the ceiling across the alternating contenders: by medians, and within each
/// trial.
fn alternating_ratios(xdp: &Row, ceiling: &Row, i: usize) -> (f64, Summary) {
    let by_medians = xdp.mpps[i].median / ceiling.mpps[i].median;
    let paired = Summary::paired(&xdp.mpps[i].trials, &ceiling.mpps[i].trials);
    (by_medians, paired)
}

/// Those ratios as the report prints them, with the ceiling's spread.
fn alternating_text(xdp: &Row, ceiling: &Row, i: usize) -> String {
    let (by_medians, paired) = alternating_ratios(xdp, ceiling, i);
    let spread = ceiling.mpps[i].max / ceiling.mpps[i].min.max(f64::MIN_POSITIVE);
    format!(
        "{:.1}% by medians, {:.1}% ({:.0}–{:.0}%) within each trial{}",
        by_medians * 100.0,
        paired.median * 100.0,
        paired.min * 100.0,
        paired.max * 100.0,
        if spread >= 1.5 {
            format!("; the ceiling itself varied {spread:.1}-fold between trials")
        } else {
            String::new()
        },
    )
}

fn overloaded_text(xdp: &Row, ceiling: &Row, i: usize) -> String {
    match (xdp.overloaded_mpps.get(i), ceiling.overloaded_mpps.get(i)) {
        (Some(x), Some(c)) => format!(
            "; at full overload alone {:.1}% by medians",
            x.median / c.median * 100.0
        ),
        _ => String::new(),
    }
}

fn met(yes: bool) -> &'static str {
    if yes { "met" } else { "NOT met" }
}

/// The target judged on the ceiling measured beside the relay ([`BesideCeiling`]), with the
/// alternating contenders' figures after it; `None` if no trial measured it at this size.
fn beside_ceiling(
    r: &RelayPps,
    one_interface: bool,
    xdp: &Row,
    ceiling: &Row,
    i: usize,
) -> Option<String> {
    let n = r.frame_sizes[i];
    let beside: Vec<&BesideCeiling> = r
        .beside_ceiling
        .iter()
        .filter(|b| b.frame_bytes == n && b.one_interface == one_interface)
        .collect();
    if beside.is_empty() {
        return None;
    }
    let name = if one_interface {
        "no-op XDP_TX"
    } else {
        "no-op redirect"
    };
    let ratio = Summary::of_or_zero(beside.iter().map(|b| b.ratio()).collect());
    let steady = Summary::of_or_zero(beside.iter().map(|b| b.relay_again / b.relay).collect());
    Some(format!(
        "XDP / {name} {:.1}% ({:.0}–{:.0}%) of the ceiling measured beside it, per trial (the relay, the {name} on the same links, the relay again started afresh, seconds apart; the relay's second measurement ÷ its first: {:.2} ({:.2}–{:.2})) (target ≥ 85%: {}); across the alternating contenders {}{}",
        ratio.median * 100.0,
        ratio.min * 100.0,
        ratio.max * 100.0,
        steady.median,
        steady.min,
        steady.max,
        met(ratio.median >= 0.85),
        alternating_text(xdp, ceiling, i),
        overloaded_text(xdp, ceiling, i),
    ))
}

/// The one-interface layout: its table and the relay against the XDP_TX ceiling.
fn one_interface_markdown(md: &mut String, r: &RelayPps) {
    let _ = writeln!(
        md,
        "### On one interface, against the no-op XDP_TX ceiling\n\nAs a relay with one NIC runs: the peer is a second address on the generator's link (198.18.0.2), the relayed addresses are the listening address's, so the relay unwraps ChannelData and sends it back out of d0 (XDP_TX). The ceiling is a no-op XDP_TX on d0; beside it, the floor of any relay: the same XDP_TX after stripping the ChannelData header (`bpf_xdp_adjust_head`) and writing the datagram's Ethernet, IPv4 and UDP headers (addresses and ports swapped, lengths and the IP header checksum updated, no UDP checksum), no lookup. A sink on g0 counts (its receive processing on the DUT's core, as the sink's on s0 above). Same generator, frames and trials, contenders alternating. In each trial, right after the relay's measurement at each size, the no-op XDP_TX is measured on the same link and then the relay again (started afresh, its channel bound again), seconds apart; the target is judged on that ratio, as the packet-rate scenario judges the gateway's: this VM's speed moves between two states within a minute, and the alternating contenders of one trial are a minute or more apart.\n"
    );
    table(md, &r.one_interface, &r.frame_sizes);
    let find = |c| measured(&r.one_interface, c);
    let (Some(xdp), Some(ceiling)) = (find(Contender::RelayGatewayXdp), find(Contender::NoopTx))
    else {
        let _ = writeln!(md);
        return;
    };
    let _ = writeln!(md);
    for (i, n) in r.frame_sizes.iter().enumerate() {
        let _ = writeln!(
            md,
            "- {n} B: {}; {}.",
            beside_ceiling(r, true, xdp, ceiling, i).unwrap_or_else(|| against_ceiling(
                xdp,
                ceiling,
                i,
                "no-op XDP_TX"
            )),
            crate::stats::per_packet_budget(
                "the no-op XDP_TX",
                ceiling.mpps[i].median,
                "the relay",
                xdp.mpps[i].median,
                0.85 * ceiling.mpps[i].median
            )
        );
        if let Some(floor) = find(Contender::UnwrappingTx) {
            let _ = writeln!(
                md,
                "  - XDP / the XDP_TX that does only what any relay must to the frame (the 4-byte head adjustment, the datagram's 42 bytes of headers written; no lookup, no checksum arithmetic beyond the IP header's): {}. That floor against the no-op XDP_TX: {}, which is what the target leaves a relay once it writes the frame at all. The gap from the floor to the relay is the relay's own work (parse, binding and route lookups, counters, checksums).",
                xdp.mpps[i].share_of(&floor.mpps[i]),
                floor.mpps[i].share_of(&ceiling.mpps[i]),
            );
        }
    }
    let _ = writeln!(md);
}

pub fn markdown(md: &mut String, r: &RelayPps) {
    let _ = writeln!(
        md,
        "## TURN relay with an in-kernel generator: relayed packets per second\n"
    );
    let _ = writeln!(
        md,
        "One client allocates and binds a channel to the sink from the generator's address; the generator then sends that client's ChannelData (BPF_PROG_RUN live frames, {} per trial and size, XDP_TX into the DUT's d0), so no sending thread limits the rate. Counted where it arrives: the sink's XDP program counts the datagrams the relay unwrapped (for the ceiling, every frame). The DUT's receive processing on its own core. The ceiling is a no-op XDP redirect from d0 to d1, the two interfaces a relay forwards between. Frames: full checksums, sizes on the wire without FCS. Median (min–max) over trials, contenders alternating; in each trial, right after the relay's measurement at each size, the ceiling is measured on the same links and then the relay again (started afresh, its channel bound again), seconds apart, and the 85% target is judged on that ratio (see the one-interface section). {}\n",
        r.frames,
        r.method.describe()
    );
    table(md, &r.rows, &r.frame_sizes);
    let find = |c| measured(&r.rows, c);
    if let (Some(xdp), Some(coturn), Some(ceiling)) = (
        find(Contender::RelayGatewayXdp),
        find(Contender::RelayCoturn),
        find(Contender::NoopRedirect),
    ) {
        let _ = writeln!(md);
        for (i, n) in r.frame_sizes.iter().enumerate() {
            let vs_coturn = xdp.mpps[i].median / coturn.mpps[i].median;
            let _ = writeln!(
                md,
                "- {n} B: XDP / coturn {vs_coturn:.1}x (target ≥ 10x: {}); {}.",
                met(vs_coturn >= 10.0),
                beside_ceiling(r, false, xdp, ceiling, i).unwrap_or_else(|| against_ceiling(
                    xdp,
                    ceiling,
                    i,
                    "no-op redirect"
                )),
            );
            let _ = writeln!(
                md,
                "  - what 85% of the ceiling asks, by the medians: {}.",
                crate::stats::per_packet_budget(
                    "the no-op redirect",
                    ceiling.mpps[i].median,
                    "the relay",
                    xdp.mpps[i].median,
                    0.85 * ceiling.mpps[i].median
                )
            );
            if let Some(floor) = find(Contender::ReadingRedirect) {
                let _ = writeln!(
                    md,
                    "  - XDP / the redirect that reads the IP header first: {}. (The no-op redirect never reads a frame; this one reads what any forwarder must before the same redirect, and ran at {:.0}% of the no-op's rate by medians. The gap from it to the relay is the relay's own work.)",
                    xdp.mpps[i].share_of(&floor.mpps[i]),
                    floor.mpps[i].median / ceiling.mpps[i].median * 100.0,
                );
            }
        }
        let _ = writeln!(md);
    }
    if !r.one_interface.is_empty() {
        one_interface_markdown(md, r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(c: Contender, mpps: &[f64]) -> Row {
        Row {
            contender: c,
            label: label(c).to_string(),
            mpps: vec![Summary::of(mpps.to_vec())],
            loss: vec![Summary::of(vec![0.0; mpps.len()])],
            overloaded_mpps: Vec::new(),
            error: None,
        }
    }

    fn triple(one_interface: bool, relay: f64, ceiling: f64, relay_again: f64) -> BesideCeiling {
        BesideCeiling {
            one_interface,
            frame_bytes: 64,
            relay,
            ceiling,
            relay_again,
        }
    }

    #[test]
    fn the_target_is_judged_on_the_ceiling_beside_the_relay_of_its_own_layout() {
        // The alternating contenders say 60% (a ceiling trial in the host's fast state beside a
        // relay trial in its slow one); the triples, each within seconds, say 86-90%.
        let r = RelayPps {
            method: RateMethod::CURRENT,
            frame_sizes: vec![64],
            frames: 1,
            rows: Vec::new(),
            one_interface: Vec::new(),
            beside_ceiling: vec![
                triple(true, 4.4, 5.0, 4.2),
                triple(true, 3.0, 3.4, 3.0),
                triple(true, 4.5, 5.0, 4.5),
                // Another layout's triple is not this one's (counted, it would move the
                // median to 87.1%).
                triple(false, 1.0, 5.0, 1.0),
            ],
        };
        let xdp = row(Contender::RelayGatewayXdp, &[3.0, 3.0]);
        let ceiling = row(Contender::NoopTx, &[5.0, 5.0]);
        let line = beside_ceiling(&r, true, &xdp, &ceiling, 0).unwrap();
        assert!(
            line.starts_with("XDP / no-op XDP_TX 88.2% (86–90%) of the ceiling measured beside it"),
            "{line}"
        );
        assert!(line.contains("(target ≥ 85%: met)"), "{line}");
        assert!(
            line.contains("across the alternating contenders 60.0% by medians"),
            "{line}"
        );
        let two = beside_ceiling(&r, false, &xdp, &ceiling, 0).unwrap();
        assert!(two.starts_with("XDP / no-op redirect 20.0%"), "{two}");
        assert!(two.contains("(target ≥ 85%: NOT met)"), "{two}");
        // No triple at a size: the alternating contenders judge it.
        let none = RelayPps {
            beside_ceiling: Vec::new(),
            ..r
        };
        assert!(beside_ceiling(&none, true, &xdp, &ceiling, 0).is_none());
    }
}
