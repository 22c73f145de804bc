//! Deadlines on the kernel's tick counter (jiffies) for the per-flow shortcuts.
//!
//! The shortcuts check a deadline on every packet. The coarse monotonic clock the rest of the
//! data plane uses is a helper call (about 13 ns in this VM); `bpf_jiffies64` is inlined by the
//! verifier into one load, so a slot holds its deadline in jiffies, converted once when it is
//! filled from the coarse-clock deadline the full path used. The conversion rounds down, so a
//! slot never outlives the deadline it stands for: at worst it asks the full path a tick early.

/// What one jiffy is worth where the kernel's tick is unknown: the longest tick Linux has
/// (HZ=100). With a faster tick it only makes slots expire sooner than their deadlines.
pub const NS_PER_JIFFY_SLOWEST: u64 = 10_000_000;

/// The fastest tick Linux has (HZ=1000).
pub const NS_PER_JIFFY_FASTEST: u64 = 1_000_000;

/// The jiffy from which `deadline_ns` (coarse monotonic clock) may have passed, given both
/// clocks read now; a deadline already passed gives `now_jiffies` (expired at once).
#[inline(always)]
pub fn deadline_jiffies(now_jiffies: u64, now_ns: u64, deadline_ns: u64, ns_per_jiffy: u64) -> u64 {
    // A tick shorter than the fastest Linux has cannot be right: take the slowest instead, which
    // only shortens the slot's life.
    let per = if ns_per_jiffy < NS_PER_JIFFY_FASTEST {
        NS_PER_JIFFY_SLOWEST
    } else {
        ns_per_jiffy
    };
    now_jiffies + deadline_ns.saturating_sub(now_ns) / per
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With a 4 ms tick (HZ=250), the jiffy at which the deadline is due: the slot is served
    /// while jiffies < the result, so (result - now) ticks never exceed the time left.
    #[test]
    fn a_slot_never_outlives_its_deadline() {
        let tick = 4_000_000;
        for left in [
            0u64,
            1,
            3_999_999,
            4_000_000,
            4_000_001,
            999_999_999,
            1_000_000_000,
        ] {
            let d = deadline_jiffies(500, 7_000_000_000, 7_000_000_000 + left, tick);
            assert!(
                (d - 500) * tick <= left,
                "{left} ns left: {} ticks",
                d - 500
            );
            assert!(
                (d - 500 + 1) * tick > left,
                "{left} ns left: rounded down by a tick at most"
            );
        }
        assert_eq!(
            deadline_jiffies(500, 1_000_000_000, 1_000_000_000, tick),
            500
        );
    }

    #[test]
    fn a_passed_deadline_is_due_now() {
        assert_eq!(
            deadline_jiffies(9, 2_000_000_000, 1_000_000_000, 4_000_000),
            9
        );
    }

    #[test]
    fn an_implausible_tick_is_taken_as_the_slowest() {
        assert_eq!(deadline_jiffies(0, 0, 1_000_000_000, 0), 100);
        assert_eq!(deadline_jiffies(0, 0, 1_000_000_000, 999), 100);
        assert_eq!(deadline_jiffies(0, 0, 1_000_000_000, 1_000_000), 1000);
    }
}
