//! Compiling and atomically applying a 10,000-rule policy, and the memory it takes.

use std::time::Instant;

use gateway_dataplane::{Dataplane, LoadOptions};
use gateway_policy::compile;
use serde::Serialize;

use crate::{cost::limits_for, rules, stats::Summary};

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Apply {
    pub rules: usize,
    pub compile_ms: Summary,
    pub write_ms: Summary,
    pub total_ms: Summary,
    pub verdict_entries: usize,
    pub v4_chunks: usize,
    /// Bytes the policy's own entries take in one slot (chunks, verdict keys and values) on
    /// top of the fixed root and port arrays.
    pub policy_bytes: u64,
    pub fixed_bytes_per_slot: u64,
    /// Kernel memory of the policy maps sized for this policy, both slots.
    pub map_memlock_bytes: u64,
}

pub fn run(quick: bool) -> anyhow::Result<Apply> {
    let n = 10_000;
    let trials = if quick { 3 } else { 9 };
    let limits = limits_for(n);
    let mut dp = Dataplane::load(&LoadOptions {
        limits: limits.clone(),
        ..Default::default()
    })?;
    let (mut c_ms, mut w_ms, mut t_ms) = (Vec::new(), Vec::new(), Vec::new());
    let mut last = None;
    for trial in 0..trials {
        // A different policy each time, so every apply rewrites the slot.
        let syn = rules::synthetic(
            n,
            1000 + trial as u64,
            gateway_policy::Protocol::Tcp,
            "100.64.0.0/10".parse()?,
        );
        let start = Instant::now();
        let compiled = compile::compile(&syn.set, &limits.compile_limits())?;
        let compiled_at = start.elapsed();
        dp.apply(&compiled)?;
        let total = start.elapsed();
        c_ms.push(compiled_at.as_secs_f64() * 1e3);
        w_ms.push((total - compiled_at).as_secs_f64() * 1e3);
        t_ms.push(total.as_secs_f64() * 1e3);
        eprintln!(
            "bench apply: trial {trial}: compile {:.1} ms, write+flip {:.1} ms",
            c_ms[trial], w_ms[trial]
        );
        last = Some(compiled.stats);
    }
    let s = last.expect("at least one trial");
    let entry = (size_of::<gateway_common::acl::VerdictKey>()
        + size_of::<gateway_common::acl::Verdict>()) as u64;
    Ok(Apply {
        rules: n,
        compile_ms: Summary::of(c_ms),
        write_ms: Summary::of(w_ms),
        total_ms: Summary::of(t_ms),
        verdict_entries: s.verdicts,
        v4_chunks: s.v4_chunks,
        policy_bytes: s.v4_chunks as u64 * 16 * 8 + s.verdicts as u64 * entry,
        fixed_bytes_per_slot: 65536 * 8 + 2 * 65536 * 8,
        map_memlock_bytes: dp.policy_map_memory()?,
    })
}
