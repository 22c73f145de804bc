use serde::Serialize;

/// Median with min and max over trials.
#[derive(Debug, Clone, Serialize)]
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
        let median = if n % 2 == 1 { trials[n / 2] } else { (trials[n / 2 - 1] + trials[n / 2]) / 2.0 };
        Summary { median, min: trials[0], max: trials[n - 1], trials: raw }
    }
}
