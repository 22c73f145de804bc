use serde::Serialize;

/// Median with min and max over trials.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub trials: Vec<f64>,
}

impl Summary {
    pub fn of(mut trials: Vec<f64>) -> Summary {
        let raw = trials.clone();
        trials.sort_by(|a, b| a.total_cmp(b));
        let n = trials.len();
        let median = if n % 2 == 1 {
            trials[n / 2]
        } else {
            (trials[n / 2 - 1] + trials[n / 2]) / 2.0
        };
        Summary {
            median,
            min: trials[0],
            max: trials[n - 1],
            trials: raw,
        }
    }

    /// `a ÷ b` within each trial (the two ran back to back, which drift between trials cannot
    /// fake), over the trials where `b` measured anything.
    pub fn paired(a: &[f64], b: &[f64]) -> Summary {
        Summary::of_or_zero(
            a.iter()
                .zip(b)
                .filter(|(_, b)| **b > 0.0)
                .map(|(a, b)| a / b)
                .collect(),
        )
    }

    /// This rate as a share of `base`'s: by medians, and within each trial (median, min–max).
    pub fn share_of(&self, base: &Summary) -> String {
        let paired = Summary::paired(&self.trials, &base.trials);
        format!(
            "{:.0}% by medians, {:.0}% ({:.0}–{:.0}%) within each trial",
            100.0 * self.median / base.median,
            100.0 * paired.median,
            100.0 * paired.min,
            100.0 * paired.max
        )
    }

    /// As `of`, with a single 0 for a contender that produced no trials (its error says why).
    pub fn of_or_zero(trials: Vec<f64>) -> Summary {
        Summary::of(if trials.is_empty() { vec![0.0] } else { trials })
    }
}

/// The p-th percentile (nearest rank) of `values`.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// The per-packet arithmetic behind a rate target, from medians in Mpps. The DUT's core is
/// saturated in these runs (the generator overdrives it), so 1 / rate is its time per packet,
/// the sink's share included, alike for every contender. `base` is the reference path (a no-op
/// ceiling); what the contender adds to it is its own work, and the target rate says how much
/// of that would fit.
pub fn per_packet_budget(
    base: &str,
    base_mpps: f64,
    who: &str,
    measured_mpps: f64,
    target_mpps: f64,
) -> String {
    let ns = |mpps: f64| 1e3 / mpps.max(f64::MIN_POSITIVE);
    let (b, m, t) = (ns(base_mpps), ns(measured_mpps), ns(target_mpps));
    let fits = if t > b {
        format!("the target's rate leaves {:.0} ns for it", t - b)
    } else {
        format!("the target's rate is above {base}'s own: no work at all fits")
    };
    format!(
        "per packet on the DUT's core, {base} {b:.0} ns, {who} {m:.0} ns: {who}'s own work {:.0} ns; {fits}",
        m - b
    )
}

#[cfg(test)]
mod tests {
    use super::per_packet_budget;

    #[test]
    fn the_budget_is_the_target_time_less_the_base_time() {
        // 2 Mpps = 500 ns; 1 Mpps = 1000 ns; 85% of 2 Mpps = 1.7 Mpps = 588 ns.
        let s = per_packet_budget("ceiling", 2.0, "gw", 1.0, 1.7);
        assert_eq!(
            s,
            "per packet on the DUT's core, ceiling 500 ns, gw 1000 ns: gw's own work 500 ns; the target's rate leaves 88 ns for it"
        );
        let s = per_packet_budget("ceiling", 2.0, "gw", 1.0, 2.5);
        assert!(s.ends_with("no work at all fits"), "{s}");
    }
}
