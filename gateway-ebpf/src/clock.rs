//! The shortcuts' clock: the kernel's tick counter, and the tick's length the loader found
//! (gateway_common::clock says why a slot's deadline is kept in jiffies).

use aya_ebpf::helpers::generated::bpf_jiffies64;
use gateway_common::clock::{NS_PER_JIFFY_SLOWEST, deadline_jiffies};

/// Nanoseconds per jiffy of the running kernel: the resolution of CLOCK_MONOTONIC_COARSE, which
/// the loader writes here (`dataplane::Dataplane::load`). Left as it is, the slowest tick.
#[unsafe(no_mangle)]
static NS_PER_JIFFY: u64 = NS_PER_JIFFY_SLOWEST;

/// The tick counter: one load (the verifier inlines the helper on 64-bit JITs).
#[inline(always)]
pub fn jiffies() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_jiffies64() }
}

/// The jiffy from which a slot filled now stops standing for a deadline of the coarse clock.
#[inline(always)]
pub fn slot_deadline(now_ns: u64, deadline_ns: u64) -> u64 {
    // SAFETY: a global the loader may set; read as memory, not folded to its initial value.
    let per = unsafe { core::ptr::read_volatile(&NS_PER_JIFFY) };
    deadline_jiffies(jiffies(), now_ns, deadline_ns, per)
}
