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
