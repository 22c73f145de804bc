//! Synthetic policies of N rules over N distinct prefixes, and packets that hit them.

use std::net::Ipv4Addr;

use gateway::policy::{Action, Group, GroupRef, Policy, PolicySet, PortSet, PortRange, Protocol, DEFAULT_PRIORITY};
use ipnet::{IpNet, Ipv4Net};
use rand::{Rng, SeedableRng, rngs::StdRng};

pub struct Synthetic {
    pub set: PolicySet,
    /// A packet the policy accepts: (source, destination, TCP port).
    pub accepted: (Ipv4Addr, Ipv4Addr, u16),
    /// A packet no rule matches (default deny).
    pub unmatched: (Ipv4Addr, Ipv4Addr, u16),
}

/// N rules, each from its own random source prefix (/16 to /32, anywhere in IPv4 except the
/// overlay) to the overlay on one random TCP port; one in five drops. Every source prefix is
/// distinct, so the address trie holds N prefixes.
pub fn synthetic(n: usize, seed: u64) -> Synthetic {
    let mut rng = StdRng::seed_from_u64(seed);
    let overlay: Ipv4Net = "100.64.0.0/10".parse().expect("constant");
    let mut seen = std::collections::HashSet::new();
    let mut groups = vec![Group { name: "overlay".into(), members: vec![IpNet::V4(overlay)] }];
    let mut policies = Vec::with_capacity(n);
    let mut accepted = None;
    while policies.len() < n {
        let len = rng.random_range(16..=32u8);
        let addr = Ipv4Addr::from(rng.random::<u32>());
        let net = Ipv4Net::new(addr, len).expect("valid length").trunc();
        if overlay.contains(&net.network()) || net.contains(&overlay.network()) || !seen.insert(net) {
            continue;
        }
        let i = policies.len();
        let port = rng.random_range(1024..=65535u16);
        let action = if i % 5 == 4 { Action::Drop } else { Action::Accept };
        groups.push(Group { name: format!("src{i}"), members: vec![IpNet::V4(net)] });
        if accepted.is_none() && action == Action::Accept && i >= n / 2 {
            accepted = Some((net.network(), Ipv4Addr::new(100, 64, 7, 9), port));
        }
        policies.push(Policy {
            name: format!("rule{i}"),
            enabled: true,
            description: String::new(),
            source_groups: vec![GroupRef::Named(format!("src{i}"))],
            destination_groups: vec![GroupRef::Named("overlay".into())],
            bidirectional: false,
            action,
            protocol: Protocol::Tcp,
            ports: PortSet::from_ranges(vec![PortRange { start: port, end: port }]),
            destination_ips: Vec::new(),
            exceptions: Vec::new(),
            priority: DEFAULT_PRIORITY,
        });
    }
    let accepted = accepted.unwrap_or((Ipv4Addr::new(0, 0, 0, 0), Ipv4Addr::new(100, 64, 7, 9), 1));
    // An address outside every rule's prefix: the overlay itself as source.
    let unmatched = (Ipv4Addr::new(100, 64, 1, 1), Ipv4Addr::new(100, 64, 7, 9), 80);
    Synthetic { set: PolicySet { groups, policies }, accepted, unmatched }
}
