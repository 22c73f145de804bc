//! Knobs for profiling one contender under a long, steady load (`--only`, `--frames`): a run
//! that uses them is for `perf` and `bpftool`, not a result, so it must be written elsewhere
//! than bench/ (`--out`).

use std::sync::OnceLock;

#[derive(Default)]
pub struct Profiling {
    /// Substrings of contender labels; the others are skipped (empty: none is).
    only: Vec<String>,
    /// Frames per packet-rate trial, in place of the scenario's own count.
    frames: Option<u32>,
}

static PROFILING: OnceLock<Profiling> = OnceLock::new();

/// Sets the knobs for this process (once, before any scenario runs).
pub fn set(only: Option<&str>, frames: Option<u32>) {
    let only = only
        .map(|o| o.split('|').map(str::to_string).collect())
        .unwrap_or_default();
    let _ = PROFILING.set(Profiling { only, frames });
}

fn get() -> &'static Profiling {
    PROFILING.get_or_init(Profiling::default)
}

/// Whether `--only` leaves the contender with this label out.
pub fn skips(label: &str) -> bool {
    let only = &get().only;
    !only.is_empty() && !only.iter().any(|o| label.contains(o.as_str()))
}

/// The frames of a packet-rate trial: the scenario's `default`, unless `--frames` says.
pub fn frames(default: u32) -> u32 {
    get().frames.unwrap_or(default)
}
