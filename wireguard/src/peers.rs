//! The peers the gateway wants on its interface, checked whole, and the difference to what the
//! interface has: only that difference is applied, so a peer that stays keeps its session.

use std::{collections::BTreeMap, net::SocketAddr};

use defguard_wireguard_rs::{key::Key, net::IpAddrMask, peer::Peer};
use ipnet::IpNet;

/// One WireGuard peer as configured (file mode) or sent by management (RemotePeerConfig).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSpec {
    /// Base64, as `wg` and NetBird print keys.
    pub public_key: String,
    pub allowed_ips: Vec<IpNet>,
    /// Where to send the first handshake; `None`: learned from the peer's own handshake.
    pub endpoint: Option<SocketAddr>,
    /// Persistent keepalive in seconds; `None` or 0: off.
    pub keepalive: Option<u16>,
}

/// What the interface reports of a peer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerState {
    pub public_key: String,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    /// Seconds since the last completed handshake; `None`: never.
    pub handshake_age_secs: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeerError {
    #[error("peer {index}: public key {key:?} is not a 32-byte key in base64")]
    BadKey { index: usize, key: String },
    #[error("peer {key} is listed twice")]
    Duplicate { key: String },
    #[error("peer {key} is this gateway's own key")]
    OwnKey { key: String },
    #[error("peers {a} and {b} both claim {net}: WireGuard routes an address to one peer only")]
    Overlap { a: String, b: String, net: IpNet },
}

/// A desired peer set that passed every check, keyed by public key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerSet(pub(crate) BTreeMap<[u8; 32], PeerSpec>);

impl PeerSet {
    /// Checks the whole list before anything is applied: keys decode, none twice, not our own,
    /// and no address network claimed by two peers (WireGuard would silently move it).
    pub fn check(peers: &[PeerSpec], own_public: Option<&str>) -> Result<PeerSet, PeerError> {
        let mut set = BTreeMap::new();
        for (index, p) in peers.iter().enumerate() {
            let key = Key::try_from(p.public_key.trim()).map_err(|_| PeerError::BadKey {
                index,
                key: p.public_key.clone(),
            })?;
            let canonical = key.to_string();
            if own_public.is_some_and(|own| own == canonical) {
                return Err(PeerError::OwnKey { key: canonical });
            }
            let mut spec = p.clone();
            spec.public_key = canonical.clone();
            spec.allowed_ips = p.allowed_ips.iter().map(IpNet::trunc).collect();
            spec.allowed_ips.sort();
            spec.allowed_ips.dedup();
            spec.keepalive = p.keepalive.filter(|k| *k != 0);
            if set.insert(key.as_array(), spec).is_some() {
                return Err(PeerError::Duplicate { key: canonical });
            }
        }
        // Sorted by network, two peers claiming one network sit side by side: a map of 10,000
        // peers (20,000 claims with IPv6) is checked in milliseconds, where comparing every pair
        // took most of a second.
        let mut claims: Vec<(&IpNet, &str)> = set
            .values()
            .flat_map(|s: &PeerSpec| {
                s.allowed_ips
                    .iter()
                    .map(move |n| (n, s.public_key.as_str()))
            })
            .collect();
        claims.sort_unstable();
        if let Some(pair) = claims
            .windows(2)
            .find(|w| w[0].0 == w[1].0 && w[0].1 != w[1].1)
        {
            return Err(PeerError::Overlap {
                a: pair[0].1.to_string(),
                b: pair[1].1.to_string(),
                net: *pair[0].0,
            });
        }
        Ok(PeerSet(set))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn specs(&self) -> impl Iterator<Item = &PeerSpec> {
        self.0.values()
    }
}

/// What one apply changes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PeerDiff {
    /// New peers, and peers whose allowed IPs, keepalive or configured endpoint changed (updated
    /// in place: their session stays).
    pub set: Vec<PeerSpec>,
    pub remove: Vec<String>,
    pub unchanged: usize,
}

/// The interface's current peers as specs (what `diff` compares).
pub(crate) fn current_specs(peers: &[Peer]) -> BTreeMap<[u8; 32], PeerSpec> {
    peers
        .iter()
        .map(|p| {
            let mut allowed: Vec<IpNet> = p
                .allowed_ips
                .iter()
                .filter_map(|a| IpNet::new(a.address, a.cidr).ok().map(|n| n.trunc()))
                .collect();
            allowed.sort();
            (
                p.public_key.as_array(),
                PeerSpec {
                    public_key: p.public_key.to_string(),
                    allowed_ips: allowed,
                    endpoint: p.endpoint,
                    keepalive: p.persistent_keepalive_interval.filter(|k| *k != 0),
                },
            )
        })
        .collect()
}

/// The difference from `current` to `desired`. A desired peer without an endpoint keeps the
/// one the interface learned; a configured endpoint that differs is set again.
pub fn diff(current: &BTreeMap<[u8; 32], PeerSpec>, desired: &PeerSet) -> PeerDiff {
    let mut d = PeerDiff::default();
    for (key, want) in &desired.0 {
        match current.get(key) {
            Some(have)
                if have.allowed_ips == want.allowed_ips
                    && have.keepalive == want.keepalive
                    && (want.endpoint.is_none() || want.endpoint == have.endpoint) =>
            {
                d.unchanged += 1
            }
            _ => d.set.push(want.clone()),
        }
    }
    d.remove = current
        .iter()
        .filter(|(k, _)| !desired.0.contains_key(*k))
        .map(|(_, s)| s.public_key.clone())
        .collect();
    d
}

pub(crate) fn to_peer(spec: &PeerSpec) -> anyhow::Result<Peer> {
    let key = Key::try_from(spec.public_key.as_str())
        .map_err(|e| anyhow::anyhow!("peer key {}: {e}", spec.public_key))?;
    let mut p = Peer::new(key);
    p.allowed_ips = spec
        .allowed_ips
        .iter()
        .map(|n| IpAddrMask::new(n.addr(), n.prefix_len()))
        .collect();
    p.endpoint = spec.endpoint;
    p.persistent_keepalive_interval = spec.keepalive;
    Ok(p)
}

pub(crate) fn state(p: &Peer, now: std::time::SystemTime) -> PeerState {
    let mut allowed: Vec<IpNet> = p
        .allowed_ips
        .iter()
        .filter_map(|a| IpNet::new(a.address, a.cidr).ok())
        .collect();
    allowed.sort();
    PeerState {
        public_key: p.public_key.to_string(),
        endpoint: p.endpoint,
        allowed_ips: allowed,
        // The kernel reports "never" as the epoch.
        handshake_age_secs: p
            .last_handshake
            .filter(|t| *t > std::time::UNIX_EPOCH)
            .map(|t| now.duration_since(t).map(|d| d.as_secs()).unwrap_or(0)),
        rx_bytes: p.rx_bytes,
        tx_bytes: p.tx_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> String {
        Key::new([n; 32]).to_string()
    }

    fn spec(n: u8, nets: &[&str]) -> PeerSpec {
        PeerSpec {
            public_key: key(n),
            allowed_ips: nets.iter().map(|s| s.parse().unwrap()).collect(),
            endpoint: None,
            keepalive: Some(25),
        }
    }

    #[test]
    fn a_bad_list_is_refused_whole() {
        let bad = PeerSpec {
            public_key: "not-a-key".into(),
            ..spec(1, &[])
        };
        assert_eq!(
            PeerSet::check(&[spec(1, &["100.64.0.2/32"]), bad], None),
            Err(PeerError::BadKey {
                index: 1,
                key: "not-a-key".into()
            })
        );
        assert!(matches!(
            PeerSet::check(&[spec(1, &[]), spec(1, &[])], None),
            Err(PeerError::Duplicate { .. })
        ));
        assert!(matches!(
            PeerSet::check(&[spec(1, &[])], Some(&key(1))),
            Err(PeerError::OwnKey { .. })
        ));
        // The two claims of 100.64.0.2/32 are neither the first nor neighbours in the list;
        // a network inside another (the /24 and the /25) is not a second claim.
        let overlap = PeerSet::check(
            &[
                spec(1, &["100.64.0.2/32", "10.0.0.0/24"]),
                spec(2, &["100.64.0.3/32", "10.0.0.0/25"]),
                spec(3, &["fd00::2/128", "100.64.0.2/32"]),
            ],
            None,
        );
        assert_eq!(
            overlap,
            Err(PeerError::Overlap {
                a: key(1),
                b: key(3),
                net: "100.64.0.2/32".parse().unwrap()
            })
        );
        let apart = PeerSet::check(
            &[
                spec(1, &["100.64.0.2/32", "10.0.0.0/24"]),
                spec(2, &["100.64.0.3/32", "10.0.0.0/25"]),
                spec(3, &["fd00::2/128", "100.64.0.4/32"]),
            ],
            None,
        );
        assert_eq!(apart.map(|s| s.len()), Ok(3));
    }

    #[test]
    fn keys_and_networks_are_normalised() {
        let hex = "01".repeat(32);
        let set = PeerSet::check(
            &[PeerSpec {
                public_key: hex,
                allowed_ips: vec!["100.64.0.9/24".parse().unwrap()],
                endpoint: None,
                keepalive: Some(0),
            }],
            None,
        )
        .unwrap();
        let s = set.specs().next().unwrap();
        assert_eq!(s.public_key, key(1));
        assert_eq!(
            s.allowed_ips,
            vec!["100.64.0.0/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(s.keepalive, None);
    }

    #[test]
    fn only_the_difference_is_applied() {
        let current = PeerSet::check(
            &[
                spec(1, &["100.64.0.2/32"]),
                spec(2, &["100.64.0.3/32"]),
                spec(3, &["100.64.0.4/32"]),
            ],
            None,
        )
        .unwrap()
        .0;
        let desired = PeerSet::check(
            &[
                spec(1, &["100.64.0.2/32"]),
                spec(3, &["100.64.0.4/32", "198.18.20.0/24"]),
                spec(4, &["100.64.0.5/32"]),
            ],
            None,
        )
        .unwrap();
        let d = diff(&current, &desired);
        assert_eq!(d.unchanged, 1, "peer 1 is left alone");
        assert_eq!(
            d.set
                .iter()
                .map(|s| s.public_key.clone())
                .collect::<Vec<_>>(),
            vec![key(3), key(4)]
        );
        assert_eq!(d.remove, vec![key(2)]);
    }

    #[test]
    fn a_learned_endpoint_is_not_a_difference_but_a_configured_one_is() {
        let mut learned = spec(1, &["100.64.0.2/32"]);
        learned.endpoint = Some("198.18.0.2:40000".parse().unwrap());
        let current = PeerSet::check(&[learned.clone()], None).unwrap().0;
        assert_eq!(
            diff(
                &current,
                &PeerSet::check(&[spec(1, &["100.64.0.2/32"])], None).unwrap()
            )
            .unchanged,
            1
        );
        let mut moved = learned;
        moved.endpoint = Some("198.18.0.3:51820".parse().unwrap());
        assert_eq!(
            diff(&current, &PeerSet::check(&[moved], None).unwrap())
                .set
                .len(),
            1
        );
    }
}
