//! The WireGuard-aware underlay filter: an XDP program in front of the gateway's WireGuard port
//! lets through only well-formed WireGuard messages and rate-limits handshake initiations, per
//! source and in total, so that a flood of them cannot starve established tunnels. Pure parts
//! here (the message check, the rate limiter), shared by the kernel program and host tests.

use crate::{assert_size, user_pod};

/// WireGuard's message types and their exact sizes (the whole UDP payload), from the protocol:
/// initiation 148, response 92, cookie reply 64; transport data is a 16-byte header, the
/// encrypted payload padded to 16 bytes and a 16-byte tag: at least 32, a multiple of 16.
pub const MSG_INITIATION: u8 = 1;
pub const MSG_RESPONSE: u8 = 2;
pub const MSG_COOKIE_REPLY: u8 = 3;
pub const MSG_TRANSPORT: u8 = 4;
pub const INITIATION_LEN: u32 = 148;
pub const RESPONSE_LEN: u32 = 92;
pub const COOKIE_REPLY_LEN: u32 = 64;
pub const TRANSPORT_MIN_LEN: u32 = 32;

/// What a datagram to the WireGuard port is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    Initiation,
    Response,
    CookieReply,
    Transport,
    /// Not a WireGuard message: wrong type, reserved bytes set, or a size its type never has.
    Malformed,
}

/// Classifies a UDP payload by its length and first four bytes (type, then three reserved
/// zero bytes).
pub const fn classify(payload_len: u32, head: [u8; 4]) -> Message {
    if head[1] != 0 || head[2] != 0 || head[3] != 0 {
        return Message::Malformed;
    }
    match head[0] {
        MSG_INITIATION if payload_len == INITIATION_LEN => Message::Initiation,
        MSG_RESPONSE if payload_len == RESPONSE_LEN => Message::Response,
        MSG_COOKIE_REPLY if payload_len == COOKIE_REPLY_LEN => Message::CookieReply,
        MSG_TRANSPORT if payload_len >= TRANSPORT_MIN_LEN && payload_len.is_multiple_of(16) => {
            Message::Transport
        }
        _ => Message::Malformed,
    }
}

/// One rate limit as the generic cell rate algorithm keeps it: `interval_ns` between admitted
/// messages on average, bursts of up to `burst` at once.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rate {
    pub interval_ns: u64,
    /// (burst - 1) intervals: how far ahead of now the theoretical arrival time may run.
    pub tolerance_ns: u64,
}

impl Rate {
    /// `per_second` messages a second on average, `burst` at once; 0 per second: unlimited.
    pub const fn new(per_second: u32, burst: u32) -> Rate {
        if per_second == 0 {
            return Rate {
                interval_ns: 0,
                tolerance_ns: 0,
            };
        }
        let interval_ns = 1_000_000_000 / per_second as u64;
        let burst = if burst == 0 { 1 } else { burst };
        Rate {
            interval_ns,
            tolerance_ns: interval_ns * (burst as u64 - 1),
        }
    }
}

/// Admits a message at `now` against the theoretical arrival time `tat` (0: none yet); returns
/// the new one, or `None` to refuse.
pub const fn admit(tat: u64, now: u64, rate: Rate) -> Option<u64> {
    if rate.interval_ns == 0 {
        return Some(0);
    }
    let start = if tat > now { tat } else { now };
    if start - now > rate.tolerance_ns {
        return None;
    }
    Some(start + rate.interval_ns)
}

/// The filter's settings (one entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnderlaySettings {
    /// Handshake initiations from one source address.
    pub per_source: Rate,
    /// Handshake initiations on one CPU, all sources together (the total is this times CPUs).
    pub per_cpu: Rate,
}
assert_size!(Rate, 16);
assert_size!(UnderlaySettings, 32);
user_pod!(UnderlaySettings, Rate);

/// WireGuard's own limit for handshake initiations per source (drivers/net/wireguard/
/// ratelimiter.c: 20 a second, bursts of 5).
pub const DEFAULT_PER_SOURCE_PER_SECOND: u32 = 20;
pub const DEFAULT_PER_SOURCE_BURST: u32 = 5;
/// All sources together, per CPU.
pub const DEFAULT_PER_CPU_PER_SECOND: u32 = 2_000;
pub const DEFAULT_PER_CPU_BURST: u32 = 200;

/// A source of handshake initiations (IPv4 in the first 4 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 3],
}
assert_size!(SourceKey, 20);
user_pod!(SourceKey);

/// Why the filter did what it did: counters indexed by these.
pub mod reason {
    pub const PASS_OTHER: u32 = 0;
    pub const INITIATION: u32 = 1;
    pub const RESPONSE: u32 = 2;
    pub const COOKIE_REPLY: u32 = 3;
    pub const TRANSPORT: u32 = 4;
    /// A later IP fragment: its port is in the first fragment, which was checked.
    pub const PASS_FRAGMENT: u32 = 5;
    pub const DROP_MALFORMED: u32 = 6;
    pub const DROP_RATE_SOURCE: u32 = 7;
    pub const DROP_RATE_TOTAL: u32 = 8;
    pub const DROP_TRUNCATED: u32 = 9;
    pub const SLOTS: u32 = 10;
}

pub const REASON_NAMES: [&str; reason::SLOTS as usize] = [
    "other_traffic",
    "initiation",
    "response",
    "cookie_reply",
    "transport",
    "later_fragment",
    "malformed",
    "rate_limited_source",
    "rate_limited_total",
    "truncated",
];

/// Whether a reason drops the packet.
pub const fn drops(r: u32) -> bool {
    r >= reason::DROP_MALFORMED
}

/// How many protected ports the filter holds.
pub const PORTS_MAX: u32 = 16;
/// Sources whose initiation rate is tracked (least recently used ones are forgotten).
pub const SOURCES_MAX: u32 = 65_536;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_wireguard_shapes_pass() {
        assert_eq!(classify(148, [1, 0, 0, 0]), Message::Initiation);
        assert_eq!(classify(92, [2, 0, 0, 0]), Message::Response);
        assert_eq!(classify(64, [3, 0, 0, 0]), Message::CookieReply);
        assert_eq!(
            classify(32, [4, 0, 0, 0]),
            Message::Transport,
            "a keepalive"
        );
        assert_eq!(classify(1440, [4, 0, 0, 0]), Message::Transport);
        for (len, head) in [
            (149, [1, 0, 0, 0]),
            (148, [1, 0, 0, 1]),
            (92, [1, 0, 0, 0]),
            (16, [4, 0, 0, 0]),
            (33, [4, 0, 0, 0]),
            (148, [5, 0, 0, 0]),
            (0, [0; 4]),
        ] {
            assert_eq!(classify(len, head), Message::Malformed, "{len} {head:?}");
        }
    }

    #[test]
    fn the_rate_limit_admits_a_burst_then_its_rate() {
        let rate = Rate::new(20, 5);
        let mut tat = 0;
        let t0 = 1_000_000_000;
        for _ in 0..5 {
            tat = admit(tat, t0, rate).expect("within the burst");
        }
        assert_eq!(admit(tat, t0, rate), None, "the sixth at once");
        // 50 ms later (1/20 s) one more.
        assert!(admit(tat, t0 + 50_000_000, rate).is_some());
        assert_eq!(admit(tat, t0 + 49_000_000, rate), None);
        // A quiet second restores the whole burst, not more.
        let mut later = tat;
        let t1 = t0 + 2_000_000_000;
        for _ in 0..5 {
            later = admit(later, t1, rate).expect("burst again");
        }
        assert_eq!(admit(later, t1, rate), None);
        assert_eq!(
            admit(123, 0, Rate::new(0, 0)),
            Some(0),
            "0 per second: unlimited"
        );
    }
}
