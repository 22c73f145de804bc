//! Synthetic policies of N rules over N distinct prefixes, and packets that hit them.

use std::net::Ipv4Addr;

use gateway_policy::{
    Action, DEFAULT_PRIORITY, Group, GroupRef, Policy, PolicySet, PortRange, PortSet, Protocol,
};
use ipnet::{IpNet, Ipv4Net};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// One rule as the contenders express it: source prefix, protocol, destination port, action.
#[derive(Clone, Debug)]
pub struct Rule {
    pub src: Ipv4Net,
    pub port: u16,
    pub accept: bool,
}

pub struct Synthetic {
    pub set: PolicySet,
    pub rules: Vec<Rule>,
    pub protocol: Protocol,
    /// A packet the policy accepts: (source, destination, port).
    pub accepted: (Ipv4Addr, Ipv4Addr, u16),
    /// A packet no rule matches (default deny).
    pub unmatched: (Ipv4Addr, Ipv4Addr, u16),
}

/// N rules, each from its own random source prefix (/16 to /32, anywhere in IPv4 outside the
/// benchmark and overlay ranges) to `dst` on one random port of `protocol`; one in five drops.
pub fn synthetic(n: usize, seed: u64, protocol: Protocol, dst: Ipv4Net) -> Synthetic {
    let mut rng = StdRng::seed_from_u64(seed);
    let reserved: [Ipv4Net; 3] = [
        "100.64.0.0/10".parse().unwrap(),
        "198.18.0.0/15".parse().unwrap(),
        dst,
    ];
    let mut seen = std::collections::HashSet::new();
    let mut groups = vec![Group {
        name: "dst".into(),
        members: vec![IpNet::V4(dst)],
    }];
    let mut policies = Vec::with_capacity(n);
    let mut rules = Vec::with_capacity(n);
    while policies.len() < n {
        let len = rng.random_range(16..=32u8);
        let net = Ipv4Net::new(Ipv4Addr::from(rng.random::<u32>()), len)
            .expect("valid length")
            .trunc();
        if reserved
            .iter()
            .any(|r| r.contains(&net.network()) || net.contains(&r.network()))
            || !seen.insert(net)
        {
            continue;
        }
        let i = policies.len();
        let port = rng.random_range(1024..=65535u16);
        let action = if i % 5 == 4 {
            Action::Drop
        } else {
            Action::Accept
        };
        groups.push(Group {
            name: format!("src{i}"),
            members: vec![IpNet::V4(net)],
        });
        rules.push(Rule {
            src: net,
            port,
            accept: action == Action::Accept,
        });
        policies.push(Policy {
            name: format!("rule{i}"),
            enabled: true,
            description: String::new(),
            source_groups: vec![GroupRef::Named(format!("src{i}"))],
            destination_groups: vec![GroupRef::Named("dst".into())],
            bidirectional: false,
            action,
            protocol,
            ports: PortSet::from_ranges(vec![PortRange {
                start: port,
                end: port,
            }]),
            destination_ips: Vec::new(),
            exceptions: Vec::new(),
            priority: DEFAULT_PRIORITY,
        });
    }
    let target = dst.network().to_bits() | 1;
    let accepted = rules
        .iter()
        .skip(n / 2)
        .chain(rules.iter())
        .find(|r| r.accept && !shadowed(&rules, r))
        .map(|r| (r.src.network(), Ipv4Addr::from(target), r.port))
        .unwrap_or((Ipv4Addr::UNSPECIFIED, Ipv4Addr::from(target), 1));
    let unmatched = (Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::from(target), 80);
    Synthetic {
        set: PolicySet { groups, policies },
        rules,
        protocol,
        accepted,
        unmatched,
    }
}

/// Whether a drop rule of another prefix covering this one names the same port (then the
/// accept rule's packets are dropped: drop beats accept at equal priority).
fn shadowed(rules: &[Rule], r: &Rule) -> bool {
    rules
        .iter()
        .any(|o| !o.accept && o.port == r.port && o.src.contains(&r.src.network()))
}

/// Up to `k` accepted rules whose traffic is accepted: the flows a benchmark sends.
pub fn accepted_flows(s: &Synthetic, k: usize) -> Vec<(Ipv4Addr, u16)> {
    s.rules
        .iter()
        .filter(|r| r.accept && !shadowed(&s.rules, r))
        .take(k)
        .map(|r| (r.src.network(), r.port))
        .collect()
}
