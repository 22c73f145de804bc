use std::net::IpAddr;

use ipnet::IpNet;

/// A whole policy file after validation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicySet {
    pub groups: Vec<Group>,
    pub policies: Vec<Policy>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    pub name: String,
    pub members: Vec<IpNet>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Accept,
    Drop,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "accept",
            Action::Drop => "drop",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    All,
    Tcp,
    Udp,
    Icmp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::All => "all",
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        }
    }
}

/// An inclusive range of ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

/// The ports a rule names. A list covering 1-65535 means any port (port 0 is not a usable TCP or
/// UDP port), which also lets such a rule match protocols without ports.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PortSet {
    Any,
    /// Sorted, merged, non-empty, not covering 1-65535.
    Ranges(Vec<PortRange>),
}

impl PortSet {
    pub fn from_ranges(mut ranges: Vec<PortRange>) -> PortSet {
        if ranges.is_empty() {
            return PortSet::Any;
        }
        ranges.sort();
        let mut merged: Vec<PortRange> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match merged.last_mut() {
                Some(last) if r.start as u32 <= last.end as u32 + 1 => {
                    last.end = last.end.max(r.end)
                }
                _ => merged.push(r),
            }
        }
        if merged.iter().any(|r| r.start <= 1 && r.end == u16::MAX) {
            return PortSet::Any;
        }
        PortSet::Ranges(merged)
    }

    pub fn contains(&self, port: u16) -> bool {
        match self {
            PortSet::Any => true,
            PortSet::Ranges(rs) => rs.iter().any(|r| r.start <= port && port <= r.end),
        }
    }

    pub fn is_any(&self) -> bool {
        matches!(self, PortSet::Any)
    }
}

/// Traffic a drop policy lets through after all (the seed's "allow internal DNS only").
#[derive(Clone, Debug, PartialEq)]
pub struct Exception {
    /// Empty: any destination the policy covers.
    pub destination_ips: Vec<IpNet>,
    pub protocol: Protocol,
    pub ports: PortSet,
}

#[derive(Clone, Debug, PartialEq)]
pub enum GroupRef {
    Any,
    Named(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub name: String,
    pub enabled: bool,
    pub description: String,
    pub source_groups: Vec<GroupRef>,
    pub destination_groups: Vec<GroupRef>,
    pub bidirectional: bool,
    pub action: Action,
    pub protocol: Protocol,
    pub ports: PortSet,
    /// Empty: no restriction beyond the destination groups.
    pub destination_ips: Vec<IpNet>,
    pub exceptions: Vec<Exception>,
    /// Lower numbers are decided first; at equal priority a drop beats an accept.
    pub priority: u32,
}

pub const DEFAULT_PRIORITY: u32 = 100;

/// A set of addresses: in any of `any_of`, and (when given) in any of `and_in`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AddrSet {
    pub any_of: Vec<IpNet>,
    pub and_in: Option<Vec<IpNet>>,
}

pub fn net_contains(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&ip))
}

impl AddrSet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        net_contains(&self.any_of, ip)
            && self
                .and_in
                .as_ref()
                .is_none_or(|nets| net_contains(nets, ip))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ExceptionMatch {
    pub destination: Option<Vec<IpNet>>,
    pub protocol: Protocol,
    pub ports: PortSet,
}

/// One direction of one enabled policy, with group names resolved to addresses.
#[derive(Clone, Debug, PartialEq)]
pub struct Term {
    /// Index of the policy in [`PolicySet::rules`]: the id counters and verdicts report.
    pub rule: u32,
    pub priority: u32,
    pub action: Action,
    pub src: AddrSet,
    pub dst: AddrSet,
    pub protocol: Protocol,
    pub ports: PortSet,
    pub exceptions: Vec<ExceptionMatch>,
}

/// What a compiled rule id stands for.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleInfo {
    pub name: String,
    pub action: Action,
    pub priority: u32,
}

pub const ANY_NETS: [&str; 2] = ["0.0.0.0/0", "::/0"];

pub fn any_nets() -> Vec<IpNet> {
    ANY_NETS
        .iter()
        .map(|s| s.parse().expect("constant"))
        .collect()
}

impl PolicySet {
    /// Enabled policies in file order; a rule id is an index into this list.
    pub fn rules(&self) -> Vec<RuleInfo> {
        self.policies
            .iter()
            .filter(|p| p.enabled)
            .map(|p| RuleInfo {
                name: p.name.clone(),
                action: p.action,
                priority: p.priority,
            })
            .collect()
    }

    fn members(groups: &std::collections::HashMap<&str, &Group>, refs: &[GroupRef]) -> Vec<IpNet> {
        let mut nets = Vec::new();
        for r in refs {
            match r {
                GroupRef::Any => nets.extend(any_nets()),
                GroupRef::Named(name) => {
                    if let Some(g) = groups.get(name.as_str()) {
                        nets.extend(g.members.iter().copied());
                    }
                }
            }
        }
        nets.sort();
        nets.dedup();
        nets
    }

    /// Flattens enabled policies into terms: one per direction.
    pub fn terms(&self) -> Vec<Term> {
        let mut terms = Vec::new();
        let groups: std::collections::HashMap<&str, &Group> =
            self.groups.iter().map(|g| (g.name.as_str(), g)).collect();
        for (rule, p) in self.policies.iter().filter(|p| p.enabled).enumerate() {
            let sources = Self::members(&groups, &p.source_groups);
            let destinations = Self::members(&groups, &p.destination_groups);
            let restrict = (!p.destination_ips.is_empty()).then(|| p.destination_ips.clone());
            let exceptions: Vec<ExceptionMatch> = p
                .exceptions
                .iter()
                .map(|e| ExceptionMatch {
                    destination: (!e.destination_ips.is_empty()).then(|| e.destination_ips.clone()),
                    protocol: e.protocol,
                    ports: e.ports.clone(),
                })
                .collect();
            let term = |src: AddrSet, dst: AddrSet| Term {
                rule: rule as u32,
                priority: p.priority,
                action: p.action,
                src,
                dst,
                protocol: p.protocol,
                ports: p.ports.clone(),
                exceptions: exceptions.clone(),
            };
            let side_a = AddrSet {
                any_of: sources,
                and_in: None,
            };
            let side_b = AddrSet {
                any_of: destinations,
                and_in: restrict,
            };
            terms.push(term(side_a.clone(), side_b.clone()));
            if p.bidirectional {
                terms.push(term(side_b, side_a));
            }
        }
        terms
    }
}

/// Whether a protocol/ports pair matches a packet's IP protocol and destination port.
/// Ports only restrict TCP and UDP; a protocol-"all" rule with specific ports matches only TCP
/// and UDP on those ports, one with any port matches every protocol.
pub fn proto_ports_match(protocol: Protocol, ports: &PortSet, ip_proto: u8, dport: u16) -> bool {
    let has_ports = ip_proto == 6 || ip_proto == 17;
    match protocol {
        Protocol::Tcp => ip_proto == 6 && ports.contains(dport),
        Protocol::Udp => ip_proto == 17 && ports.contains(dport),
        Protocol::Icmp => ip_proto == 1 || ip_proto == 58,
        Protocol::All => {
            if has_ports {
                ports.contains(dport)
            } else {
                ports.is_any()
            }
        }
    }
}
