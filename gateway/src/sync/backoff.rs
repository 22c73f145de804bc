//! Reconnect delays: exponential from about 0.8 s to 10 s, with jitter so that many gateways
//! restarting together do not reconnect in lockstep.

use std::time::Duration;

use rand::Rng;

pub const INITIAL: Duration = Duration::from_millis(800);
pub const MAX: Duration = Duration::from_secs(10);
const FACTOR: f64 = 1.5;
/// Each delay is scaled by a random factor in [1 - JITTER, 1 + JITTER], then capped at MAX.
const JITTER: f64 = 0.2;

#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: INITIAL }
    }
}

impl Backoff {
    /// The delay before the next attempt; each call makes the following one longer.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = base.mul_f64(FACTOR).min(MAX);
        base.mul_f64(rand::rng().random_range(1.0 - JITTER..=1.0 + JITTER))
            .min(MAX)
    }

    /// After a success, start again from the shortest delay.
    pub fn reset(&mut self) {
        self.next = INITIAL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_from_about_800ms_to_10s_with_jitter_and_resets() {
        let mut b = Backoff::default();
        let delays: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        assert!(
            delays[0] >= Duration::from_millis(640) && delays[0] <= Duration::from_millis(960),
            "{delays:?}"
        );
        assert!(delays.iter().all(|d| *d <= MAX), "{delays:?}");
        assert!(
            delays[11] >= MAX.mul_f64(1.0 - JITTER),
            "reaches the cap: {delays:?}"
        );
        // Without jitter each base is 1.5x the last until the cap.
        let bases: Vec<Duration> = {
            let mut b = Backoff::default();
            (0..8)
                .map(|_| {
                    let d = b.next;
                    b.next_delay();
                    d
                })
                .collect()
        };
        assert_eq!(bases[1], INITIAL.mul_f64(1.5));
        assert_eq!(*bases.last().unwrap(), MAX);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(960));
        // Jitter spreads the delays of gateways that fail together.
        let spread: std::collections::BTreeSet<u128> = (0..50)
            .map(|_| Backoff::default().next_delay().as_micros())
            .collect();
        assert!(spread.len() > 10);
    }
}
