//! Packet-rate scenarios: the ceiling (no filter) and the stateless filter with N rules, every
//! contender measured in the same run, alternating, several trials, counted at the sink.

use gateway_policy::Protocol;
use serde::Serialize;

use crate::{
    alternate::alternate,
    contenders::{self, Contender},
    generator::{Generator, Measurement, RateMethod, TRIAL_FRAMES},
    rules,
    stats::Summary,
    topo::Topo,
};

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct PpsRow {
    pub rules: usize,
    pub contender: Contender,
    pub label: String,
    pub mpps: Summary,
    pub loss: Summary,
    pub trials: Vec<Measurement>,
    /// Why a contender could not be measured, when it could not.
    pub error: Option<String>,
    /// The gateway only: per trial, the no-op ceiling measured on its install right after it,
    /// and the gateway measured again after that (`contenders::ceiling_beside_gateway`).
    #[serde(default)]
    pub beside_ceiling: Vec<BesideCeiling>,
}

#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize)]
pub struct BesideCeiling {
    pub gateway: Measurement,
    pub ceiling: Measurement,
    pub gateway_again: Measurement,
}

impl BesideCeiling {
    /// The gateway's rate (the mean of its two measurements) over the ceiling's between them.
    pub fn ratio(&self) -> f64 {
        (self.gateway.pps() + self.gateway_again.pps()) / 2.0 / self.ceiling.pps()
    }
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Pps {
    /// How the rates were measured (its fields sit at this level in the JSON).
    #[serde(flatten)]
    pub method: RateMethod,
    pub frame_bytes: usize,
    pub frames_per_trial: u32,
    pub flows: usize,
    pub rows: Vec<PpsRow>,
}

pub const FRAME_BYTES: usize = 60;

pub fn run(quick: bool) -> anyhow::Result<Pps> {
    let topo = Topo::create()?;
    let mut generator = Generator::new(&topo, FRAME_BYTES)?;
    let trials = if quick { 2 } else { 5 };
    let frames = crate::profiling::frames(if quick { 400_000 } else { TRIAL_FRAMES });
    let sizes: &[usize] = if quick {
        &[10, 1_000]
    } else {
        &[10, 100, 1_000, 10_000, 100_000]
    };
    let mut rows = Vec::new();
    let mut flows_used = 0;
    for &n in sizes {
        let syn = rules::synthetic(n, 7 + n as u64, Protocol::Udp, "198.19.0.0/24".parse()?);
        let flows = rules::accepted_flows(&syn, 64);
        flows_used = flows.len();
        generator.set_flows(&flows, 64)?;
        let mut beside = Vec::new();
        let outcomes = alternate(
            &format!("bench pps: {n} rules"),
            &Contender::ALL,
            |c| c.label().to_string(),
            trials,
            |c| {
                let mut installed =
                    contenders::install(c, &topo, Some(&mut generator), Some(&syn), false)?;
                let m = topo
                    .dedicate_dut_core()
                    .and_then(|_| generator.measure(&topo, frames));
                if std::env::var_os("BENCH_DEBUG").is_some() {
                    eprintln!("{}", topo.dut_sh("nstat -a | head -40").unwrap_or_default());
                }
                if let (Contender::Gateway, Ok(gateway)) = (c, &m) {
                    let pair = contenders::ceiling_beside_gateway(
                        &mut installed,
                        &topo,
                        &mut generator,
                        frames,
                    );
                    match pair {
                        Ok((ceiling, gateway_again)) => {
                            let b = BesideCeiling {
                                gateway: *gateway,
                                ceiling,
                                gateway_again,
                            };
                            eprintln!(
                                "bench pps: {n} rules, beside the gateway ({:.3} Mpps): the ceiling {:.3} Mpps, the gateway again {:.3} Mpps: {:.0}%",
                                gateway.pps() / 1e6,
                                ceiling.pps() / 1e6,
                                gateway_again.pps() / 1e6,
                                b.ratio() * 100.0
                            );
                            beside.push(b);
                        }
                        Err(e) => eprintln!("bench pps: the ceiling beside the gateway: {e:#}"),
                    }
                }
                contenders::remove(installed, &topo, Some(&mut generator))?;
                m
            },
            |m| format!("{:.3} Mpps, loss {:.1}%", m.pps() / 1e6, m.loss() * 100.0),
        );
        for (o, &c) in outcomes.into_iter().zip(Contender::ALL.iter()) {
            let s = &o.samples;
            if s.is_empty() {
                rows.push(PpsRow {
                    rules: n,
                    contender: c,
                    label: c.label().to_string(),
                    mpps: Summary::of(vec![0.0]),
                    loss: Summary::of(vec![1.0]),
                    trials: vec![],
                    error: o.error,
                    beside_ceiling: Vec::new(),
                });
                continue;
            }
            rows.push(PpsRow {
                rules: n,
                contender: c,
                label: c.label().to_string(),
                mpps: Summary::of(s.iter().map(|m| m.pps() / 1e6).collect()),
                loss: Summary::of(s.iter().map(|m| m.loss()).collect()),
                trials: s.clone(),
                error: o.error,
                beside_ceiling: if c == Contender::Gateway {
                    beside.clone()
                } else {
                    Vec::new()
                },
            });
        }
    }
    Ok(Pps {
        method: RateMethod::CURRENT,
        frame_bytes: FRAME_BYTES + 4,
        frames_per_trial: frames,
        flows: flows_used * 64,
        rows,
    })
}
