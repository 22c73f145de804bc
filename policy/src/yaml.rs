//! Reads a policy file. Every error names the file, the line and the field, and the whole file is
//! rejected: a half-read policy is never applied.

use std::{collections::HashSet, fmt, path::Path};

use ipnet::IpNet;
use saphyr::{LoadableYamlNode, MarkedYamlOwned, ScalarOwned, YamlDataOwned};

use super::*;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: String,
    pub line: usize,
    pub field: String,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        } else {
            write!(
                f,
                "{}:{}: {}: {}",
                self.file, self.line, self.field, self.message
            )
        }
    }
}

impl std::error::Error for PolicyError {}

pub fn load_file(path: &Path) -> Result<PolicySet, PolicyError> {
    let label = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
        file: label.clone(),
        line: 0,
        field: String::new(),
        message: format!("cannot read: {e}"),
    })?;
    parse_str(&text, &label)
}

type Node = MarkedYamlOwned;

struct Reader<'a> {
    file: &'a str,
}

impl Reader<'_> {
    fn err(&self, node: &Node, field: &str, message: impl Into<String>) -> PolicyError {
        PolicyError {
            file: self.file.to_string(),
            line: node.span.start.line(),
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// The entries of a mapping: key, key node (where errors about the key itself point: a value
    /// may start on a later line), value.
    fn map<'n>(
        &self,
        node: &'n Node,
        field: &str,
    ) -> Result<Vec<(String, &'n Node, &'n Node)>, PolicyError> {
        let YamlDataOwned::Mapping(m) = &node.data else {
            return Err(self.err(node, field, "expected a mapping"));
        };
        let mut out = Vec::with_capacity(m.len());
        for (k, v) in m.iter() {
            match &k.data {
                YamlDataOwned::Value(ScalarOwned::String(s)) => out.push((s.clone(), k, v)),
                _ => return Err(self.err(k, field, "keys must be strings")),
            }
        }
        Ok(out)
    }

    fn seq<'n>(&self, node: &'n Node, field: &str) -> Result<&'n [Node], PolicyError> {
        match &node.data {
            YamlDataOwned::Sequence(s) => Ok(s),
            YamlDataOwned::Value(ScalarOwned::Null) => Ok(&[]),
            _ => Err(self.err(node, field, "expected a list")),
        }
    }

    /// A scalar as text (numbers too: `53` and `"53"` are the same port).
    fn text(&self, node: &Node, field: &str) -> Result<String, PolicyError> {
        match &node.data {
            YamlDataOwned::Value(ScalarOwned::String(s)) => Ok(s.clone()),
            YamlDataOwned::Value(ScalarOwned::Integer(i)) => Ok(i.to_string()),
            _ => Err(self.err(node, field, "expected a string")),
        }
    }

    fn string(&self, node: &Node, field: &str) -> Result<String, PolicyError> {
        match &node.data {
            YamlDataOwned::Value(ScalarOwned::String(s)) => Ok(s.clone()),
            YamlDataOwned::Value(ScalarOwned::Null) => Ok(String::new()),
            _ => Err(self.err(node, field, "expected a string")),
        }
    }

    fn boolean(&self, node: &Node, field: &str) -> Result<bool, PolicyError> {
        match &node.data {
            YamlDataOwned::Value(ScalarOwned::Boolean(b)) => Ok(*b),
            _ => Err(self.err(node, field, "expected true or false")),
        }
    }

    fn net(&self, node: &Node, field: &str) -> Result<IpNet, PolicyError> {
        let s = self.text(node, field)?;
        parse_net(&s).map_err(|m| self.err(node, field, m))
    }

    fn nets(&self, node: &Node, field: &str) -> Result<Vec<IpNet>, PolicyError> {
        self.seq(node, field)?
            .iter()
            .map(|n| self.net(n, field))
            .collect()
    }

    fn ports(&self, node: &Node, field: &str) -> Result<PortSet, PolicyError> {
        let mut ranges = Vec::new();
        for n in self.seq(node, field)? {
            let s = self.text(n, field)?;
            ranges.push(parse_port_range(&s).map_err(|m| self.err(n, field, m))?);
        }
        Ok(PortSet::from_ranges(ranges))
    }

    fn protocol(&self, node: &Node, field: &str) -> Result<Protocol, PolicyError> {
        match self.text(node, field)?.to_ascii_lowercase().as_str() {
            "all" => Ok(Protocol::All),
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "icmp" => Ok(Protocol::Icmp),
            other => Err(self.err(
                node,
                field,
                format!("unknown protocol {other:?} (all, tcp, udp, icmp)"),
            )),
        }
    }
}

/// An address or CIDR. A bare address is a host route; a CIDR with host bits set is refused
/// (it is almost always a typo for the network).
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let net: IpNet = s
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
    if net.trunc() != net {
        return Err(format!(
            "{s:?} has host bits set (did you mean {}?)",
            net.trunc()
        ));
    }
    Ok(net)
}

/// "443" or "1000-2000".
pub fn parse_port_range(s: &str) -> Result<PortRange, String> {
    let s = s.trim();
    let port = |p: &str| -> Result<u16, String> {
        let v: u32 = p
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a port or port range"))?;
        if v == 0 || v > 65535 {
            return Err(format!("port {v} is out of range 1-65535"));
        }
        Ok(v as u16)
    };
    let (start, end) = match s.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(s)?;
            (p, p)
        }
    };
    if start > end {
        return Err(format!("range {s:?} ends before it starts"));
    }
    Ok(PortRange { start, end })
}

pub fn parse_str(text: &str, file: &str) -> Result<PolicySet, PolicyError> {
    let r = Reader { file };
    let docs = Node::load_from_str(text).map_err(|e| PolicyError {
        file: file.to_string(),
        line: e.marker().line(),
        field: String::new(),
        message: format!("not valid YAML: {}", e.info()),
    })?;
    let Some(root) = docs.first() else {
        return Err(PolicyError {
            file: file.to_string(),
            line: 1,
            field: String::new(),
            message: "empty file".into(),
        });
    };
    let mut set = PolicySet::default();
    let mut policies_node = None;
    for (key, key_node, value) in r.map(root, "")? {
        match key.as_str() {
            "groups" => set.groups = read_groups(&r, value)?,
            "policies" => policies_node = Some(value),
            other => {
                return Err(r.err(
                    key_node,
                    other,
                    "unknown top-level field (expected groups, policies)",
                ));
            }
        }
    }
    let group_names: HashSet<&str> = set.groups.iter().map(|g| g.name.as_str()).collect();
    let mut policies = Vec::new();
    if let Some(node) = policies_node {
        let mut names = HashSet::new();
        for (i, p) in r.seq(node, "policies")?.iter().enumerate() {
            let policy = read_policy(&r, p, i, &group_names)?;
            if !names.insert(policy.name.clone()) {
                return Err(r.err(
                    p,
                    &format!("policies[{i}].name"),
                    format!("duplicate policy name {:?}", policy.name),
                ));
            }
            policies.push(policy);
        }
    }
    set.policies = policies;
    Ok(set)
}

fn read_groups(r: &Reader, node: &Node) -> Result<Vec<Group>, PolicyError> {
    let mut groups = Vec::new();
    for (name, key_node, members) in r.map(node, "groups")? {
        let field = format!("groups.{name}");
        if name == "*" || name.is_empty() {
            return Err(r.err(
                key_node,
                &field,
                "\"*\" means any address and cannot be defined",
            ));
        }
        groups.push(Group {
            name,
            members: r.nets(members, &field)?,
        });
    }
    Ok(groups)
}

const POLICY_FIELDS: &str = "name, enabled, description, source_groups, destination_groups, bidirectional, action, \
                             protocol, ports, destination_ips, exceptions, priority";

fn read_policy(
    r: &Reader,
    node: &Node,
    index: usize,
    groups: &HashSet<&str>,
) -> Result<Policy, PolicyError> {
    let at = |f: &str| format!("policies[{index}].{f}");
    let mut p = Policy {
        name: String::new(),
        enabled: true,
        description: String::new(),
        source_groups: Vec::new(),
        destination_groups: Vec::new(),
        bidirectional: false,
        action: Action::Accept,
        protocol: Protocol::All,
        ports: PortSet::Any,
        destination_ips: Vec::new(),
        exceptions: Vec::new(),
        priority: DEFAULT_PRIORITY,
    };
    let mut seen_action = false;
    for (key, key_node, v) in r.map(node, &format!("policies[{index}]"))? {
        let f = at(&key);
        match key.as_str() {
            "name" => p.name = r.string(v, &f)?,
            "enabled" => p.enabled = r.boolean(v, &f)?,
            "description" => p.description = r.string(v, &f)?,
            "source_groups" => p.source_groups = read_group_refs(r, v, &f, groups)?,
            "destination_groups" => p.destination_groups = read_group_refs(r, v, &f, groups)?,
            "bidirectional" => p.bidirectional = r.boolean(v, &f)?,
            "action" => {
                seen_action = true;
                p.action = match r.text(v, &f)?.to_ascii_lowercase().as_str() {
                    "accept" => Action::Accept,
                    "drop" => Action::Drop,
                    other => {
                        return Err(r.err(
                            v,
                            &f,
                            format!("unknown action {other:?} (accept, drop)"),
                        ));
                    }
                }
            }
            "protocol" => p.protocol = r.protocol(v, &f)?,
            "ports" => p.ports = r.ports(v, &f)?,
            "destination_ips" => p.destination_ips = r.nets(v, &f)?,
            "exceptions" => {
                for (j, e) in r.seq(v, &f)?.iter().enumerate() {
                    p.exceptions
                        .push(read_exception(r, e, &format!("{f}[{j}]"))?);
                }
            }
            "priority" => {
                p.priority = match &v.data {
                    YamlDataOwned::Value(ScalarOwned::Integer(i))
                        if (0..=i64::from(u32::MAX)).contains(i) =>
                    {
                        *i as u32
                    }
                    _ => {
                        return Err(r.err(
                            v,
                            &f,
                            "expected a whole number (lower is decided first)",
                        ));
                    }
                }
            }
            other => {
                return Err(r.err(
                    key_node,
                    &at(other),
                    format!("unknown field (expected one of: {POLICY_FIELDS})"),
                ));
            }
        }
    }
    if p.name.trim().is_empty() {
        return Err(r.err(node, &at("name"), "every policy needs a name"));
    }
    if !seen_action {
        return Err(r.err(node, &at("action"), "missing (accept or drop)"));
    }
    if p.source_groups.is_empty() {
        return Err(r.err(
            node,
            &at("source_groups"),
            "missing or empty (use \"*\" for any)",
        ));
    }
    if p.destination_groups.is_empty() {
        return Err(r.err(
            node,
            &at("destination_groups"),
            "missing or empty (use \"*\" for any)",
        ));
    }
    if p.protocol == Protocol::Icmp && !p.ports.is_any() {
        return Err(r.err(node, &at("ports"), "ICMP has no ports"));
    }
    if !p.exceptions.is_empty() && p.action != Action::Drop {
        return Err(r.err(
            node,
            &at("exceptions"),
            "exceptions only apply to drop policies",
        ));
    }
    Ok(p)
}

fn read_group_refs(
    r: &Reader,
    node: &Node,
    field: &str,
    groups: &HashSet<&str>,
) -> Result<Vec<GroupRef>, PolicyError> {
    let mut refs = Vec::new();
    for n in r.seq(node, field)? {
        let name = r.text(n, field)?;
        if name == "*" {
            refs.push(GroupRef::Any);
        } else if groups.contains(name.as_str()) {
            refs.push(GroupRef::Named(name));
        } else {
            return Err(r.err(n, field, format!("unknown group {name:?}")));
        }
    }
    Ok(refs)
}

fn read_exception(r: &Reader, node: &Node, field: &str) -> Result<Exception, PolicyError> {
    let mut e = Exception {
        destination_ips: Vec::new(),
        protocol: Protocol::All,
        ports: PortSet::Any,
    };
    for (key, key_node, v) in r.map(node, field)? {
        let f = format!("{field}.{key}");
        match key.as_str() {
            "destination_ips" => e.destination_ips = r.nets(v, &f)?,
            "protocol" => e.protocol = r.protocol(v, &f)?,
            "ports" => e.ports = r.ports(v, &f)?,
            _ => {
                return Err(r.err(
                    key_node,
                    &f,
                    "unknown field (expected destination_ips, protocol, ports)",
                ));
            }
        }
    }
    if e.protocol == Protocol::Icmp && !e.ports.is_any() {
        return Err(r.err(node, &format!("{field}.ports"), "ICMP has no ports"));
    }
    Ok(e)
}
