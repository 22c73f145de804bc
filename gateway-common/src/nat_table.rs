//! The masquerade's translation tables: two bucket tables (`buckets`), one per direction.
//!
//! - A translation's forward entry lives in the bucket its original tuple hashes to, its
//!   reverse entry in the bucket its translated tuple hashes to (each table its own array).
//! - A bucket without a free way gives up its oldest translation that never saw a reply (as
//!   the kernel's conntrack drops an unassured entry early when full); that translation's
//!   entry in the other table then leads nowhere, so no port is ever held by two flows. A
//!   translation that was replied to is never evicted: its bucket full of those is a counted
//!   drop of the new flow.
//! - Both tables share one pinned shape (bucket count, hash seed).

use crate::{
    assert_size,
    buckets::{Bucket, WAYS, Way},
    nat::{NatKey, NatTarget},
    user_pod,
};

/// One translation as one table holds it.
pub type NatWay = Way<NatKey, NatTarget>;
assert_size!(NatWay, 72);

pub type NatBucket = Bucket<NatWay>;
assert_size!(NatBucket, 8 + 72 * WAYS);

user_pod!(NatWay, NatBucket);

crate::flow_table_entry!(NatKey, NatTarget);

/// The key of a translation's entry in the other table, from one entry (`key` → `target`):
/// the forward entry's gives the reverse key and the reverse entry's the forward key. An echo
/// flow's identifier is both of its ports.
#[inline(always)]
pub fn counterpart(key: &NatKey, target: &NatTarget) -> NatKey {
    let echo = key.proto == 1 || key.proto == 58;
    NatKey {
        local: target.addr,
        remote: key.remote,
        local_port: target.port,
        remote_port: if echo { target.port } else { key.remote_port },
        proto: key.proto,
        family: key.family,
        _pad: [0; 2],
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    fn key(port: u16, host: u8) -> NatKey {
        NatKey {
            local: [100, 64, 0, host, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            remote: [198, 18, 1, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            local_port: port,
            remote_port: 443,
            proto: 6,
            family: 4,
            _pad: [0; 2],
        }
    }

    #[test]
    fn counterparts_lead_back() {
        let k = key(40_000, 1);
        let t = NatTarget {
            addr: [198, 18, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            port: 20_001,
            ..Default::default()
        };
        let r = counterpart(&k, &t);
        assert_eq!(
            (r.local, r.local_port, r.remote_port),
            (t.addr, 20_001, 443)
        );
        let back = NatTarget {
            addr: k.local,
            port: k.local_port,
            ..Default::default()
        };
        assert_eq!(counterpart(&r, &back), k);
        // Echo: the identifier is both ports.
        let e = NatKey {
            proto: 1,
            local_port: 9,
            remote_port: 9,
            ..k
        };
        let re = counterpart(&e, &t);
        assert_eq!((re.local_port, re.remote_port), (20_001, 20_001));
    }
}
