//! Knobs for profiling one contender under a long, steady load (`--only`, `--frames`, `--pace`):
//! a run that uses them is for `perf` and `bpftool`, not a result, so it must be written
//! elsewhere than bench/ (`--out`).

use std::sync::{
    OnceLock,
    atomic::{AtomicBool, Ordering},
};

#[derive(Default)]
pub struct Profiling {
    /// Substrings of contender labels; the others are skipped (empty: none is).
    only: Vec<String>,
    /// Frames per packet-rate trial, in place of the scenario's own count.
    frames: Option<u32>,
    /// One run at this offered load (frames per second) per measurement.
    pace: Option<f64>,
}

static PROFILING: OnceLock<Profiling> = OnceLock::new();

/// Whether `--only` let any contender through (a filter that matches nothing measures nothing).
static MATCHED: AtomicBool = AtomicBool::new(false);

/// Sets the knobs for this process (once, before any scenario runs).
pub fn set(only: Option<&str>, frames: Option<u32>, pace: Option<f64>) {
    let only = only
        .map(|o| o.split('|').map(str::to_string).collect())
        .unwrap_or_default();
    let _ = PROFILING.set(Profiling { only, frames, pace });
}

fn get() -> &'static Profiling {
    PROFILING.get_or_init(Profiling::default)
}

/// Whether `--only` leaves the contender with this label out.
pub fn skips(label: &str) -> bool {
    let only = &get().only;
    let skipped = !only.is_empty() && !only.iter().any(|o| label.contains(o.as_str()));
    if !skipped {
        MATCHED.store(true, Ordering::Relaxed);
    }
    skipped
}

/// After the scenarios ran: an error if `--only` was given and no contender's label matched it
/// (the run measured nothing, and its report would be rows of zeros).
pub fn ensure_matched() -> anyhow::Result<()> {
    let only = &get().only;
    anyhow::ensure!(
        only.is_empty() || MATCHED.load(Ordering::Relaxed),
        "--only {:?} matched no contender's label, so nothing was measured (labels are the \
         contender names of the report; separate several with `|`)",
        only.join("|")
    );
    Ok(())
}

/// The frames of a packet-rate trial: the scenario's `default`, unless `--frames` says.
pub fn frames(default: u32) -> u32 {
    get().frames.unwrap_or(default)
}

/// The offered load `--pace` fixes (frames per second), if it does.
pub fn pace() -> Option<f64> {
    get().pace
}
