//! Keeps the kernel's BPF run-time statistics off while measuring.
//!
//! With `kernel.bpf_stats_enabled` on, every run of every BPF program reads the clock twice
//! (`sched_clock`, a paravirtual clock read in a VM): a profile of the nat scenario with it on
//! showed those reads at 9% of the device under test's core. The cost falls on each contender in
//! proportion to the BPF programs its packets pass, so it skews the ratios, not just the rates.
//! A profiling session that turned it on and was interrupted leaves it on, so the bench checks.

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Turns the statistics off for the guard's lifetime if they were on; puts them back after.
pub struct StatsOff {
    restore: bool,
}

impl StatsOff {
    pub fn ensure() -> StatsOff {
        let on = std::fs::read_to_string(SYSCTL).is_ok_and(|v| v.trim() == "1");
        if on {
            match std::fs::write(SYSCTL, "0") {
                Ok(()) => eprintln!(
                    "bench: kernel.bpf_stats_enabled was 1 (it adds two clock reads to every BPF program run); off for this run, on again after"
                ),
                Err(e) => eprintln!(
                    "bench: kernel.bpf_stats_enabled is 1 and could not be turned off ({e}): BPF contenders are measured with its cost"
                ),
            }
        }
        StatsOff { restore: on }
    }
}

impl Drop for StatsOff {
    fn drop(&mut self) {
        if self.restore {
            let _ = std::fs::write(SYSCTL, "1");
        }
    }
}
