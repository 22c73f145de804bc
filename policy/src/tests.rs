//! Host tests of the policy model: the YAML reader (the shipped example, and every error naming
//! file, line and field), port sets, protocol/port matching, and the reference evaluator.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;

use super::reference::{Judgement, evaluate};
use super::yaml::{PolicyError, parse_port_range};
use super::*;

const FILE: &str = "t.yaml";

fn example_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/policy.yaml")
}

fn example() -> PolicySet {
    load_file(&example_path()).unwrap_or_else(|e| panic!("examples/policy.yaml: {e}"))
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn range(start: u16, end: u16) -> PortRange {
    PortRange { start, end }
}

fn parse(text: &str) -> PolicySet {
    parse_str(text, FILE).unwrap_or_else(|e| panic!("unexpected error: {e}\n--- input ---\n{text}"))
}

fn parse_err(text: &str) -> PolicyError {
    match parse_str(text, FILE) {
        Ok(set) => panic!("expected an error, parsed {set:?}\n--- input ---\n{text}"),
        Err(e) => e,
    }
}

/// Asserts the error's file, line and field, and that the message contains `needle`.
#[track_caller]
fn assert_err(text: &str, line: usize, field: &str, needle: &str) -> PolicyError {
    let e = parse_err(text);
    assert_eq!(e.file, FILE, "{e}");
    assert_eq!(
        (e.line, e.field.as_str()),
        (line, field),
        "wrong location: {e}\n--- input ---\n{text}"
    );
    assert!(
        e.message.contains(needle),
        "message {:?} lacks {needle:?}\n--- input ---\n{text}",
        e.message
    );
    e
}

/// Lines 1-6 of every policy document built by [`doc`].
const HEADER: &str =
    "groups:\n  a:\n    - 10.0.0.0/8\n  b:\n    - 192.168.0.0/16\n  c: []\npolicies:\n";
/// The line of the first policy line [`doc`] writes.
const FIRST: usize = 8;

/// A document with groups a, b, c and the given policies; each policy is a list of lines (keys at
/// the policy's indentation, deeper lines indented further by the caller). The first line of the
/// first policy is line [`FIRST`], and lines follow on without gaps.
fn doc(policies: &[&[&str]]) -> String {
    let mut s = HEADER.to_string();
    for p in policies {
        for (i, l) in p.iter().enumerate() {
            s.push_str(if i == 0 { "  - " } else { "    " });
            s.push_str(l);
            s.push('\n');
        }
    }
    s
}

const OK: &[&str] = &[
    "name: ok",
    "source_groups: [a]",
    "destination_groups: [b]",
    "action: accept",
];

/// [`OK`] with extra lines after it (the first extra line is line FIRST + 4).
fn ok_with(extra: &[&str]) -> String {
    let lines: Vec<&str> = OK.iter().chain(extra).copied().collect();
    doc(&[&lines])
}

// ---------------------------------------------------------------------------------------------
// The shipped example.

#[test]
fn example_policy_parses() {
    let set = example();
    let names: Vec<&str> = set.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "control-plane",
            "orchestration",
            "demo-windows",
            "demo-linux",
            "demo-webapp"
        ]
    );
    let members: Vec<Vec<IpNet>> = set.groups.iter().map(|g| g.members.clone()).collect();
    assert_eq!(
        members,
        [
            vec![net("100.64.10.0/24")],
            vec![net("100.64.20.0/24")],
            vec![net("100.64.100.0/24")],
            vec![net("100.64.101.0/24")],
            vec![net("100.64.102.0/24")],
        ]
    );

    let names: Vec<&str> = set.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "control-plane-full-access",
            "orchestration-to-containers",
            "demo-isolation",
            "demo-no-internet"
        ]
    );
    for p in &set.policies {
        assert_eq!(p.priority, DEFAULT_PRIORITY, "{}", p.name);
        assert_eq!(DEFAULT_PRIORITY, 100);
        assert!(p.enabled, "{}", p.name);
        assert!(!p.description.is_empty(), "{}", p.name);
    }
    let demos = vec![
        GroupRef::Named("demo-windows".into()),
        GroupRef::Named("demo-linux".into()),
        GroupRef::Named("demo-webapp".into()),
    ];

    let cp = &set.policies[0];
    assert_eq!(cp.description, "Control plane has full network access");
    assert_eq!(cp.source_groups, [GroupRef::Named("control-plane".into())]);
    assert_eq!(cp.destination_groups, [GroupRef::Any]);
    assert!(!cp.bidirectional);
    assert_eq!((cp.action, cp.protocol), (Action::Accept, Protocol::All));
    assert_eq!(cp.ports, PortSet::Any, "1-65535 is any port");
    assert!(cp.destination_ips.is_empty() && cp.exceptions.is_empty());

    let orch = &set.policies[1];
    assert_eq!(
        orch.source_groups,
        [GroupRef::Named("orchestration".into())]
    );
    assert_eq!(orch.destination_groups, demos);
    assert!(!orch.bidirectional);
    assert_eq!(
        (orch.action, orch.protocol),
        (Action::Accept, Protocol::Tcp)
    );
    assert_eq!(
        orch.ports,
        PortSet::Ranges(vec![
            range(443, 443),
            range(2377, 2377),
            range(4789, 4789),
            range(6900, 6900),
            range(7946, 7946)
        ])
    );

    let iso = &set.policies[2];
    assert_eq!(iso.source_groups, demos);
    assert_eq!(iso.destination_groups, demos);
    assert!(iso.bidirectional);
    assert_eq!(
        (iso.action, iso.protocol, &iso.ports),
        (Action::Drop, Protocol::All, &PortSet::Any)
    );
    assert!(iso.exceptions.is_empty());

    let inet = &set.policies[3];
    assert_eq!(inet.source_groups, demos);
    assert_eq!(inet.destination_groups, [GroupRef::Any]);
    assert!(!inet.bidirectional);
    assert_eq!(
        (inet.action, inet.protocol, &inet.ports),
        (Action::Drop, Protocol::All, &PortSet::Any)
    );
    assert_eq!(inet.destination_ips, [net("0.0.0.0/0")]);
    assert_eq!(
        inet.exceptions,
        [Exception {
            destination_ips: vec![net("100.64.1.53/32")],
            protocol: Protocol::Udp,
            ports: PortSet::Ranges(vec![range(53, 53)]),
        }]
    );

    // Rule ids and terms: one term per direction.
    let rules = set.rules();
    assert_eq!(rules.len(), 4);
    assert_eq!(
        rules[2],
        RuleInfo {
            name: "demo-isolation".into(),
            action: Action::Drop,
            priority: 100
        }
    );
    let terms = set.terms();
    assert_eq!(
        terms.iter().map(|t| t.rule).collect::<Vec<_>>(),
        [0, 1, 2, 2, 3]
    );
    assert_eq!(terms[0].dst.any_of, any_nets());
    assert_eq!(terms[4].dst.and_in, Some(vec![net("0.0.0.0/0")]));
    assert_eq!(
        terms[4].exceptions[0].destination,
        Some(vec![net("100.64.1.53/32")])
    );
}

#[test]
fn defaults_and_accepted_spellings() {
    let set = parse(&doc(&[
        &[
            "name: minimal",
            "source_groups: [a]",
            "destination_groups: [\"*\"]",
            "action: DROP",
        ],
        &[
            "name: full",
            "enabled: false",
            "description:",
            "source_groups: [a, b, a]",
            "destination_groups:",
            "  - b",
            "bidirectional: true",
            "action: accept",
            "protocol: UDP",
            "ports: [53, \"1000-2000\", \" 1500-2500 \"]",
            "destination_ips: [192.168.1.1, \"192.168.2.0/24\", \"2001:db8::/32\"]",
            "priority: 0",
        ],
    ]));
    let m = &set.policies[0];
    assert!(m.enabled && !m.bidirectional);
    assert_eq!(
        (m.action, m.protocol, &m.ports, m.priority),
        (Action::Drop, Protocol::All, &PortSet::Any, 100)
    );
    assert_eq!(m.description, "");
    let f = &set.policies[1];
    assert!(!f.enabled && f.bidirectional);
    assert_eq!(
        (f.action, f.protocol, f.priority),
        (Action::Accept, Protocol::Udp, 0)
    );
    assert_eq!(
        f.ports,
        PortSet::Ranges(vec![range(53, 53), range(1000, 2500)])
    );
    assert_eq!(
        f.destination_ips,
        [
            net("192.168.1.1/32"),
            net("192.168.2.0/24"),
            net("2001:db8::/32")
        ]
    );
    assert_eq!(f.destination_groups, [GroupRef::Named("b".into())]);
    // A disabled policy has no rule id.
    assert_eq!(set.rules().len(), 1);
    // The empty group c and a file with no policies are fine.
    assert_eq!(
        set.groups[2],
        Group {
            name: "c".into(),
            members: vec![]
        }
    );
    assert_eq!(parse(HEADER).policies, []);
    assert_eq!(parse("policies: []\n"), PolicySet::default());
    // A large priority fits.
    let set = parse(&ok_with(&["priority: 4294967295"]));
    assert_eq!(set.policies[0].priority, u32::MAX);
}

// ---------------------------------------------------------------------------------------------
// Errors: file, line, field.

#[test]
fn error_display_format() {
    let e = assert_err(
        &ok_with(&["priority: high"]),
        FIRST + 4,
        "policies[0].priority",
        "whole number",
    );
    assert_eq!(
        e.to_string(),
        format!("t.yaml:12: policies[0].priority: {}", e.message)
    );
    let e = PolicyError {
        file: "f".into(),
        line: 3,
        field: String::new(),
        message: "m".into(),
    };
    assert_eq!(e.to_string(), "f:3: m");
    let e = PolicyError {
        file: "f".into(),
        line: 3,
        field: "x.y".into(),
        message: "m".into(),
    };
    assert_eq!(e.to_string(), "f:3: x.y: m");
}

#[test]
fn load_file_names_the_file() {
    let path = example_path();
    let e = parse_err("groups: {a: [1.2.3.4/8]}\n");
    assert_eq!(
        (e.file.as_str(), e.line, e.field.as_str()),
        (FILE, 1, "groups.a")
    );
    let missing = path.with_file_name("no-such-policy.yaml");
    let e = load_file(&missing).unwrap_err();
    assert_eq!(e.file, missing.display().to_string());
    assert_eq!(e.line, 0);
    assert!(e.message.starts_with("cannot read"), "{e}");

    let dir = std::env::temp_dir().join(format!("gateway-policy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, ok_with(&["protocol: gre"])).unwrap();
    let e = load_file(&bad).unwrap_err();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(
        e.to_string(),
        format!("{}:12: policies[0].protocol: {}", bad.display(), e.message)
    );
}

#[test]
fn invalid_cidr() {
    let text = "groups:\n  a:\n    - 10.0.0.0/8\n    - 10.0.0.300/8\n";
    assert_err(text, 4, "groups.a", "is not an IP address or CIDR");
    assert_err(
        "groups:\n  a: [10.0.0.0/33]\n",
        2,
        "groups.a",
        "not an IP address or CIDR",
    );
    assert_err(
        "groups:\n  a: [\"\"]\n",
        2,
        "groups.a",
        "not an IP address or CIDR",
    );
    assert_err(
        "groups:\n  a: [banana]\n",
        2,
        "groups.a",
        "not an IP address or CIDR",
    );
    assert_err(
        &ok_with(&["destination_ips: [\"10.0.0.0/33\"]"]),
        FIRST + 4,
        "policies[0].destination_ips",
        "not an IP",
    );
    assert_err(
        &doc(&[&[
            "name: d",
            "source_groups: [a]",
            "destination_groups: [b]",
            "action: drop",
            "exceptions:",
            "  - destination_ips:",
            "      - 2001:db8::/129",
        ]]),
        FIRST + 6,
        "policies[0].exceptions[0].destination_ips",
        "not an IP",
    );
}

#[test]
fn cidr_with_host_bits() {
    let e = assert_err(
        "groups:\n  a:\n    - 10.1.2.3/8\n",
        3,
        "groups.a",
        "host bits set",
    );
    assert!(
        e.message.contains("10.0.0.0/8"),
        "suggests the network: {e}"
    );
    assert_err(
        &ok_with(&[
            "destination_ips:",
            "  - 192.168.1.0/24",
            "  - 192.168.1.1/16",
        ]),
        FIRST + 6,
        "policies[0].destination_ips",
        "host bits",
    );
    assert_err(
        "groups:\n  six: [\"2001:db8::1/64\"]\n",
        2,
        "groups.six",
        "2001:db8::/64",
    );
    // A bare address is a host route, in both families.
    let set = parse("groups:\n  h: [10.1.2.3, \"2001:db8::1\", 10.0.0.0/8]\n");
    assert_eq!(
        set.groups[0].members,
        [
            net("10.1.2.3/32"),
            net("2001:db8::1/128"),
            net("10.0.0.0/8")
        ]
    );
}

#[test]
fn group_errors() {
    assert_err(
        "groups:\n  a: [10.0.0.0/8]\n  \"*\": [1.0.0.0/8]\n",
        3,
        "groups.*",
        "cannot be defined",
    );
    assert_err(
        "groups:\n  a: 10.0.0.0/8\n",
        2,
        "groups.a",
        "expected a list",
    );
    assert_err(
        "groups:\n  \"*\":\n    - 1.0.0.0/8\n",
        2,
        "groups.*",
        "cannot be defined",
    );
    assert_err("groups: [a, b]\n", 1, "groups", "expected a mapping");
}

#[test]
fn unknown_group_reference() {
    let text = doc(&[
        OK,
        &[
            "name: two",
            "source_groups: [a]",
            "destination_groups: [b, nope]",
            "action: drop",
        ],
    ]);
    let e = assert_err(
        &text,
        FIRST + 6,
        "policies[1].destination_groups",
        "unknown group",
    );
    assert!(e.message.contains("\"nope\""), "{e}");
    let text = doc(&[&[
        "name: x",
        "source_groups:",
        "  - a",
        "  - missing",
        "destination_groups: [b]",
        "action: drop",
    ]]);
    assert_err(&text, FIRST + 3, "policies[0].source_groups", "\"missing\"");
}

#[test]
fn unknown_protocol() {
    let e = assert_err(
        &ok_with(&["protocol: sctp"]),
        FIRST + 4,
        "policies[0].protocol",
        "unknown protocol",
    );
    assert!(e.message.contains("\"sctp\""), "{e}");
    assert_err(
        &ok_with(&["protocol: 6"]),
        FIRST + 4,
        "policies[0].protocol",
        "unknown protocol",
    );
    let text = doc(&[&[
        "name: d",
        "source_groups: [a]",
        "destination_groups: [b]",
        "action: drop",
        "exceptions:",
        "  - protocol: esp",
    ]]);
    assert_err(
        &text,
        FIRST + 5,
        "policies[0].exceptions[0].protocol",
        "unknown protocol",
    );
}

#[test]
fn unknown_action() {
    let text = doc(&[&[
        "name: x",
        "source_groups: [a]",
        "destination_groups: [b]",
        "action: reject",
    ]]);
    let e = assert_err(&text, FIRST + 3, "policies[0].action", "unknown action");
    assert!(e.message.contains("\"reject\""), "{e}");
    let text = doc(&[&[
        "name: x",
        "source_groups: [a]",
        "destination_groups: [b]",
        "action: [accept]",
    ]]);
    assert_err(&text, FIRST + 3, "policies[0].action", "expected a string");
}

#[test]
fn bad_ports() {
    let field = "policies[0].ports";
    assert_err(
        &ok_with(&["ports: [\"0\"]"]),
        FIRST + 4,
        field,
        "port 0 is out of range 1-65535",
    );
    assert_err(
        &ok_with(&["ports: [0]"]),
        FIRST + 4,
        field,
        "port 0 is out of range",
    );
    assert_err(
        &ok_with(&["ports:", "  - 80", "  - 70000"]),
        FIRST + 6,
        field,
        "port 70000 is out of range",
    );
    assert_err(
        &ok_with(&["ports:", "  - \"5-3\""]),
        FIRST + 5,
        field,
        "ends before it starts",
    );
    assert_err(
        &ok_with(&["ports: [abc]"]),
        FIRST + 4,
        field,
        "\"abc\" is not a port or port range",
    );
    assert_err(
        &ok_with(&["ports: [\"1-\"]"]),
        FIRST + 4,
        field,
        "not a port",
    );
    assert_err(
        &ok_with(&["ports: [\"-5\"]"]),
        FIRST + 4,
        field,
        "not a port",
    );
    assert_err(
        &ok_with(&["ports: [\"1-2-3\"]"]),
        FIRST + 4,
        field,
        "not a port",
    );
    assert_err(
        &ok_with(&["ports: [\"0-80\"]"]),
        FIRST + 4,
        field,
        "port 0 is out of range",
    );
    assert_err(&ok_with(&["ports: [-1]"]), FIRST + 4, field, "not a port");
    assert_err(
        &ok_with(&["ports: 443"]),
        FIRST + 4,
        field,
        "expected a list",
    );
    let text = doc(&[&[
        "name: d",
        "source_groups: [a]",
        "destination_groups: [b]",
        "action: drop",
        "exceptions:",
        "  - ports: [\"65536\"]",
    ]]);
    assert_err(
        &text,
        FIRST + 5,
        "policies[0].exceptions[0].ports",
        "port 65536 is out of range",
    );

    assert_eq!(parse_port_range("65535"), Ok(range(65535, 65535)));
    assert_eq!(parse_port_range(" 1 - 65535 "), Ok(range(1, 65535)));
    assert_eq!(parse_port_range("7-7"), Ok(range(7, 7)));
}

#[test]
fn unknown_fields() {
    let e = assert_err(
        &ok_with(&["colour: red"]),
        FIRST + 4,
        "policies[0].colour",
        "unknown field",
    );
    assert!(
        e.message.contains("destination_groups"),
        "lists the known fields: {e}"
    );
    // The error points at the key even when its value starts on a later line.
    assert_err(
        &ok_with(&["colour:", "  - red"]),
        FIRST + 4,
        "policies[0].colour",
        "unknown field",
    );
    let text = doc(&[&[
        "name: d",
        "source_groups: [a]",
        "destination_groups: [b]",
        "action: drop",
        "exceptions:",
        "  - ports: [53]",
        "    port: 54",
    ]]);
    assert_err(
        &text,
        FIRST + 6,
        "policies[0].exceptions[0].port",
        "unknown field",
    );

    assert_err(
        "groups: {}\npolicies: []\nrules: []\n",
        3,
        "rules",
        "unknown top-level field",
    );
    assert_err(
        "groups: {}\nsettings:\n  x: 1\n",
        2,
        "settings",
        "unknown top-level field",
    );
}

#[test]
fn missing_name_and_action() {
    let text = doc(&[
        OK,
        &[
            "source_groups: [a]",
            "destination_groups: [b]",
            "action: drop",
        ],
    ]);
    assert_err(&text, FIRST + 4, "policies[1].name", "needs a name");
    assert_err(
        &doc(&[&[
            "name: \"  \"",
            "source_groups: [a]",
            "destination_groups: [b]",
            "action: drop",
        ]]),
        FIRST,
        "policies[0].name",
        "needs a name",
    );
    assert_err(
        &doc(&[&[
            "name:",
            "source_groups: [a]",
            "destination_groups: [b]",
            "action: drop",
        ]]),
        FIRST,
        "policies[0].name",
        "needs a name",
    );
    let text = doc(&[&["name: x", "source_groups: [a]", "destination_groups: [b]"]]);
    assert_err(&text, FIRST, "policies[0].action", "missing");
    assert_err("policies:\n  - 7\n", 2, "policies[0]", "expected a mapping");
    assert_err("policies: {a: 1}\n", 1, "policies", "expected a list");
}

#[test]
fn empty_groups_in_policy() {
    let text = doc(&[
        OK,
        &[
            "name: x",
            "source_groups: []",
            "destination_groups: [b]",
            "action: drop",
        ],
    ]);
    assert_err(
        &text,
        FIRST + 4,
        "policies[1].source_groups",
        "missing or empty",
    );
    let text = doc(&[&["name: x", "destination_groups: [b]", "action: drop"]]);
    assert_err(
        &text,
        FIRST,
        "policies[0].source_groups",
        "missing or empty",
    );
    let text = doc(&[&[
        "name: x",
        "source_groups: [a]",
        "destination_groups:",
        "action: drop",
    ]]);
    assert_err(
        &text,
        FIRST,
        "policies[0].destination_groups",
        "missing or empty",
    );
}

#[test]
fn duplicate_policy_names() {
    let second: &[&str] = &[
        "name: ok",
        "source_groups: [b]",
        "destination_groups: [a]",
        "action: drop",
    ];
    let e = assert_err(
        &doc(&[OK, second]),
        FIRST + 4,
        "policies[1].name",
        "duplicate policy name",
    );
    assert!(e.message.contains("\"ok\""), "{e}");
}

#[test]
fn icmp_with_ports() {
    let text = doc(&[
        OK,
        &[
            "name: ping",
            "source_groups: [a]",
            "destination_groups: [b]",
            "action: accept",
            "protocol: icmp",
            "ports: [\"8\"]",
        ],
    ]);
    assert_err(&text, FIRST + 4, "policies[1].ports", "ICMP has no ports");
    // "Any port" is fine for ICMP.
    let set = parse(&ok_with(&["protocol: icmp", "ports: [\"1-65535\"]"]));
    assert_eq!(
        (set.policies[0].protocol, &set.policies[0].ports),
        (Protocol::Icmp, &PortSet::Any)
    );
    let text = doc(&[&[
        "name: d",
        "source_groups: [a]",
        "destination_groups: [b]",
        "action: drop",
        "exceptions:",
        "  - destination_ips: [192.168.0.1]",
        "  - protocol: icmp",
        "    ports: [\"0-5\"]",
    ]]);
    // Port 0 is checked first (it is a bad port anywhere).
    assert_err(
        &text,
        FIRST + 7,
        "policies[0].exceptions[1].ports",
        "port 0",
    );
    let text = text.replace("0-5", "1-5");
    assert_err(
        &text,
        FIRST + 6,
        "policies[0].exceptions[1].ports",
        "ICMP has no ports",
    );
}

#[test]
fn exceptions_on_accept() {
    let text = doc(&[&[
        "name: x",
        "source_groups: [a]",
        "destination_groups: [b]",
        "action: accept",
        "exceptions:",
        "  - ports: [53]",
    ]]);
    assert_err(&text, FIRST, "policies[0].exceptions", "only apply to drop");
    // Order of keys does not matter: the check runs after the whole policy is read.
    let text = doc(&[&[
        "name: x",
        "exceptions: [{ports: [53]}]",
        "source_groups: [a]",
        "destination_groups: [b]",
        "action: drop",
    ]]);
    assert_eq!(parse(&text).policies[0].exceptions.len(), 1);
}

#[test]
fn priority_and_enabled_types() {
    let field = "policies[0].priority";
    for bad in [
        "high",
        "1.5",
        "-1",
        "\"10\"",
        "4294967296",
        "[1]",
        "true",
        "~",
    ] {
        assert_err(
            &ok_with(&[&format!("priority: {bad}")]),
            FIRST + 4,
            field,
            "whole number",
        );
    }
    let field = "policies[0].enabled";
    for bad in ["\"yes\"", "yes", "1", "\"true\"", "on", "~"] {
        assert_err(
            &ok_with(&[&format!("enabled: {bad}")]),
            FIRST + 4,
            field,
            "expected true or false",
        );
    }
    assert_err(
        &ok_with(&["bidirectional: maybe"]),
        FIRST + 4,
        "policies[0].bidirectional",
        "expected true or false",
    );
    // A key with no value: the error is on the key's line, not the next one.
    assert_err(
        &ok_with(&["enabled:", "priority: 5"]),
        FIRST + 4,
        "policies[0].enabled",
        "expected true or false",
    );
    let text = doc(&[&[
        "name: x",
        "source_groups: [a]",
        "destination_groups: [b]",
        "action:",
        "protocol: tcp",
    ]]);
    assert_err(&text, FIRST + 3, "policies[0].action", "expected a string");
}

#[test]
fn malformed_yaml() {
    // A tab used for indentation.
    let e = assert_err(
        "groups:\n  a: [10.0.0.0/8]\n\tb: [10.1.0.0/16]\n",
        3,
        "",
        "not valid YAML",
    );
    assert!(e.message.contains("tabs"), "{e}");
    assert!(e.to_string().starts_with("t.yaml:3: not valid YAML"), "{e}");
    // An unclosed flow sequence: reported where the parser notices, the next key (the flow
    // sequence swallows the line break, then meets "destination_groups:").
    let text = doc(&[&[
        "name: x",
        "source_groups: [a, b",
        "destination_groups: [b]",
        "action: drop",
    ]]);
    assert_err(&text, FIRST + 2, "", "not valid YAML");
    // An unclosed bracket at the end of the file: the end (line 3, after the last newline).
    let e = assert_err("groups:\n  a: [10.0.0.0/8\n", 3, "", "not valid YAML");
    assert!(e.message.contains("expected ',' or ']'"), "{e}");
    // Not a mapping at the top.
    assert_err("- a\n- b\n", 1, "", "expected a mapping");
    assert_err("just text\n", 1, "", "expected a mapping");
}

#[test]
fn empty_file() {
    for text in ["", "\n\n", "# nothing here\n"] {
        let e = parse_err(text);
        assert_eq!(
            e,
            PolicyError {
                file: FILE.into(),
                line: 1,
                field: String::new(),
                message: "empty file".into()
            }
        );
        assert_eq!(e.to_string(), "t.yaml:1: empty file");
    }
}

// ---------------------------------------------------------------------------------------------
// Port sets and protocol matching.

#[test]
fn port_set_from_ranges() {
    assert_eq!(PortSet::from_ranges(vec![]), PortSet::Any);
    assert_eq!(PortSet::from_ranges(vec![range(1, 65535)]), PortSet::Any);
    // Merging adjacent and overlapping ranges, in any order.
    assert_eq!(
        PortSet::from_ranges(vec![
            range(100, 200),
            range(50, 60),
            range(201, 300),
            range(250, 260),
            range(61, 61),
            range(400, 400)
        ]),
        PortSet::Ranges(vec![range(50, 61), range(100, 300), range(400, 400)])
    );
    assert_eq!(
        PortSet::from_ranges(vec![range(80, 80), range(80, 80)]),
        PortSet::Ranges(vec![range(80, 80)])
    );
    assert_eq!(
        PortSet::from_ranges(vec![range(10, 20), range(12, 15)]),
        PortSet::Ranges(vec![range(10, 20)])
    );
    // Pieces covering 1-65535 together are any port.
    assert_eq!(
        PortSet::from_ranges(vec![range(1000, 65535), range(1, 999)]),
        PortSet::Any
    );
    assert_eq!(
        PortSet::from_ranges(vec![range(1, 1), range(2, 65535)]),
        PortSet::Any
    );
    assert_eq!(
        PortSet::from_ranges(vec![range(1, 100), range(50, 65535)]),
        PortSet::Any
    );
    // Not quite everything.
    assert_eq!(
        PortSet::from_ranges(vec![range(2, 65535)]),
        PortSet::Ranges(vec![range(2, 65535)])
    );
    assert_eq!(
        PortSet::from_ranges(vec![range(1, 65534)]),
        PortSet::Ranges(vec![range(1, 65534)])
    );
    assert_eq!(
        PortSet::from_ranges(vec![range(1, 99), range(101, 65535)]),
        PortSet::Ranges(vec![range(1, 99), range(101, 65535)])
    );
    // A range at the top does not overflow when merging.
    assert_eq!(
        PortSet::from_ranges(vec![range(65535, 65535), range(65000, 65535)]),
        PortSet::Ranges(vec![range(65000, 65535)])
    );
    // Parsed through YAML the same way.
    let set = parse(&ok_with(&["ports: [\"1-1000\", \"1001-65535\"]"]));
    assert_eq!(set.policies[0].ports, PortSet::Any);

    let s = PortSet::Ranges(vec![range(22, 22), range(1000, 2000)]);
    for (p, want) in [
        (0, false),
        (21, false),
        (22, true),
        (23, false),
        (999, false),
        (1000, true),
        (2000, true),
        (2001, false),
    ] {
        assert_eq!(s.contains(p), want, "port {p}");
    }
    assert!(PortSet::Any.contains(0) && PortSet::Any.contains(65535));
    assert!(PortSet::Any.is_any() && !s.is_any());
}

#[test]
fn proto_ports_matching() {
    let web = PortSet::Ranges(vec![range(80, 80), range(443, 443)]);
    let any = PortSet::Any;
    const TCP: u8 = 6;
    const UDP: u8 = 17;
    const ICMP: u8 = 1;
    const ICMP6: u8 = 58;
    const GRE: u8 = 47;
    // TCP/UDP rules: the protocol, and the ports restrict.
    assert!(proto_ports_match(Protocol::Tcp, &web, TCP, 443));
    assert!(!proto_ports_match(Protocol::Tcp, &web, TCP, 444));
    assert!(!proto_ports_match(Protocol::Tcp, &web, UDP, 443));
    assert!(proto_ports_match(Protocol::Tcp, &any, TCP, 0));
    assert!(!proto_ports_match(Protocol::Tcp, &any, ICMP, 0));
    assert!(proto_ports_match(Protocol::Udp, &web, UDP, 80));
    assert!(!proto_ports_match(Protocol::Udp, &web, TCP, 80));
    assert!(!proto_ports_match(Protocol::Udp, &any, GRE, 0));
    // ICMP rules match ICMP and ICMPv6 whatever the "port".
    for p in [0, 8, 443] {
        assert!(proto_ports_match(Protocol::Icmp, &any, ICMP, p));
        assert!(proto_ports_match(Protocol::Icmp, &any, ICMP6, p));
    }
    assert!(!proto_ports_match(Protocol::Icmp, &any, TCP, 0));
    assert!(!proto_ports_match(Protocol::Icmp, &any, GRE, 0));
    // Protocol all with specific ports: only TCP and UDP on those ports.
    assert!(proto_ports_match(Protocol::All, &web, TCP, 80));
    assert!(proto_ports_match(Protocol::All, &web, UDP, 443));
    assert!(!proto_ports_match(Protocol::All, &web, TCP, 81));
    assert!(!proto_ports_match(Protocol::All, &web, ICMP, 80));
    assert!(!proto_ports_match(Protocol::All, &web, ICMP6, 0));
    assert!(!proto_ports_match(Protocol::All, &web, GRE, 80));
    // Protocol all with any port: everything.
    for proto in [TCP, UDP, ICMP, ICMP6, GRE, 0, 255] {
        assert!(
            proto_ports_match(Protocol::All, &any, proto, 0),
            "proto {proto}"
        );
        assert!(
            proto_ports_match(Protocol::All, &any, proto, 65535),
            "proto {proto}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The reference evaluator.

fn judge(set: &PolicySet, src: &str, dst: &str, proto: u8, dport: u16) -> Judgement {
    evaluate(&set.terms(), ip(src), ip(dst), proto, dport)
}

fn accept(rule: u32) -> Judgement {
    Judgement {
        action: Action::Accept,
        rule: Some(rule),
    }
}

fn drop_by(rule: u32) -> Judgement {
    Judgement {
        action: Action::Drop,
        rule: Some(rule),
    }
}

const DEFAULT_DENY: Judgement = Judgement {
    action: Action::Drop,
    rule: None,
};

/// Rule ids of the example.
const CONTROL_PLANE: u32 = 0;
const ORCHESTRATION: u32 = 1;
const DEMO_ISOLATION: u32 = 2;
const DEMO_NO_INTERNET: u32 = 3;

#[test]
fn seed_control_plane_reaches_anything() {
    let set = example();
    for dst in [
        "100.64.20.5",
        "100.64.101.7",
        "100.64.1.53",
        "8.8.8.8",
        "100.64.10.2",
        "2001:db8::1",
    ] {
        for (proto, port) in [
            (6, 22),
            (6, 443),
            (17, 53),
            (1, 0),
            (58, 0),
            (47, 0),
            (6, 0),
            (6, 65535),
        ] {
            assert_eq!(
                judge(&set, "100.64.10.9", dst, proto, port),
                accept(CONTROL_PLANE),
                "{dst} {proto}/{port}"
            );
        }
    }
}

#[test]
fn seed_orchestration() {
    let set = example();
    for dst in ["100.64.100.1", "100.64.101.7", "100.64.102.254"] {
        for port in [443, 2377, 7946, 4789, 6900] {
            assert_eq!(
                judge(&set, "100.64.20.1", dst, 6, port),
                accept(ORCHESTRATION),
                "{dst} tcp/{port}"
            );
        }
        for port in [22, 80, 444, 442, 2376, 0] {
            assert_eq!(
                judge(&set, "100.64.20.1", dst, 6, port),
                DEFAULT_DENY,
                "{dst} tcp/{port}"
            );
        }
        assert_eq!(
            judge(&set, "100.64.20.1", dst, 17, 443),
            DEFAULT_DENY,
            "udp is not allowed"
        );
        assert_eq!(
            judge(&set, "100.64.20.1", dst, 1, 0),
            DEFAULT_DENY,
            "icmp is not allowed"
        );
    }
    // Not to the control plane, nor anywhere else.
    assert_eq!(
        judge(&set, "100.64.20.1", "100.64.10.1", 6, 443),
        DEFAULT_DENY
    );
    assert_eq!(judge(&set, "100.64.20.1", "8.8.8.8", 6, 443), DEFAULT_DENY);
}

#[test]
fn seed_demo_isolation() {
    let set = example();
    let demos = ["100.64.100.3", "100.64.101.7", "100.64.102.9"];
    for a in demos {
        for b in demos {
            for (proto, port) in [(6, 443), (17, 53), (1, 0), (47, 0)] {
                assert_eq!(
                    judge(&set, a, b, proto, port),
                    drop_by(DEMO_ISOLATION),
                    "{a} -> {b} {proto}/{port}"
                );
                assert_eq!(
                    judge(&set, b, a, proto, port),
                    drop_by(DEMO_ISOLATION),
                    "{b} -> {a} {proto}/{port}"
                );
            }
        }
    }
}

#[test]
fn seed_demo_internet_and_dns() {
    let set = example();
    for demo in ["100.64.100.3", "100.64.101.7", "100.64.102.9"] {
        assert_eq!(
            judge(&set, demo, "100.64.1.53", 17, 53),
            accept(DEMO_NO_INTERNET),
            "DNS exception"
        );
        assert_eq!(
            judge(&set, demo, "100.64.1.53", 17, 54),
            drop_by(DEMO_NO_INTERNET)
        );
        assert_eq!(
            judge(&set, demo, "100.64.1.53", 6, 53),
            drop_by(DEMO_NO_INTERNET)
        );
        assert_eq!(
            judge(&set, demo, "100.64.1.53", 1, 0),
            drop_by(DEMO_NO_INTERNET)
        );
        assert_eq!(
            judge(&set, demo, "100.64.1.54", 17, 53),
            drop_by(DEMO_NO_INTERNET)
        );
        assert_eq!(
            judge(&set, demo, "8.8.8.8", 17, 53),
            drop_by(DEMO_NO_INTERNET)
        );
        assert_eq!(
            judge(&set, demo, "8.8.8.8", 6, 443),
            drop_by(DEMO_NO_INTERNET)
        );
        assert_eq!(
            judge(&set, demo, "100.64.10.1", 6, 443),
            drop_by(DEMO_NO_INTERNET)
        );
        // destination_ips 0.0.0.0/0 keeps IPv6 out of demo-no-internet: only the default deny.
        assert_eq!(judge(&set, demo, "2001:db8::1", 6, 443), DEFAULT_DENY);
    }
    // Outside every group: default deny.
    assert_eq!(
        judge(&set, "100.64.1.53", "100.64.101.7", 17, 53),
        DEFAULT_DENY
    );
    assert_eq!(judge(&set, "8.8.8.8", "100.64.10.1", 6, 443), DEFAULT_DENY);
}

/// Groups a (10/8) and b (192.168/16) and the given policies.
fn set_of(policies: &[&[&str]]) -> PolicySet {
    parse(&doc(policies))
}

#[test]
fn lower_priority_number_wins() {
    let set = set_of(&[
        &[
            "name: deny",
            "source_groups: [a]",
            "destination_groups: [b]",
            "action: drop",
            "priority: 20",
        ],
        &[
            "name: allow",
            "source_groups: [a]",
            "destination_groups: [b]",
            "action: accept",
            "priority: 10",
        ],
    ]);
    assert_eq!(judge(&set, "10.0.0.1", "192.168.0.1", 6, 80), accept(1));
    let set = set_of(&[
        &[
            "name: allow",
            "source_groups: [a]",
            "destination_groups: [b]",
            "action: accept",
            "priority: 10",
        ],
        &[
            "name: deny",
            "source_groups: [a]",
            "destination_groups: [b]",
            "action: drop",
            "priority: 9",
        ],
    ]);
    assert_eq!(judge(&set, "10.0.0.1", "192.168.0.1", 6, 80), drop_by(1));
    // Only when both match: a narrower high-priority rule leaves the rest to the lower one.
    let set = set_of(&[
        &[
            "name: deny",
            "source_groups: [a]",
            "destination_groups: [b]",
            "action: drop",
            "priority: 200",
        ],
        &[
            "name: web",
            "source_groups: [a]",
            "destination_groups: [b]",
            "action: accept",
            "protocol: tcp",
            "ports: [80]",
            "priority: 1",
        ],
    ]);
    assert_eq!(judge(&set, "10.0.0.1", "192.168.0.1", 6, 80), accept(1));
    assert_eq!(judge(&set, "10.0.0.1", "192.168.0.1", 6, 81), drop_by(0));
    assert_eq!(judge(&set, "10.0.0.1", "192.168.0.1", 17, 80), drop_by(0));
}

#[test]
fn equal_priority_drop_beats_accept() {
    let set = set_of(&[
        &[
            "name: allow",
            "source_groups: [a]",
            "destination_groups: [b]",
            "action: accept",
        ],
        &[
            "name: deny",
            "source_groups: [a]",
            "destination_groups: [b]",
            "action: drop",
            "protocol: udp",
        ],
        &[
            "name: allow2",
            "source_groups: [\"*\"]",
            "destination_groups: [b]",
            "action: accept",
        ],
    ]);
    assert_eq!(judge(&set, "10.0.0.1", "192.168.0.1", 17, 53), drop_by(1));
    // Among accepts, file order.
    assert_eq!(judge(&set, "10.0.0.1", "192.168.0.1", 6, 53), accept(0));
    assert_eq!(judge(&set, "11.0.0.1", "192.168.0.1", 6, 53), accept(2));
    // Among drops, file order.
    let set = set_of(&[
        &[
            "name: d1",
            "source_groups: [a]",
            "destination_groups: [b]",
            "action: drop",
            "protocol: tcp",
        ],
        &[
            "name: d0",
            "source_groups: [a]",
            "destination_groups: [b]",
            "action: drop",
        ],
    ]);
    assert_eq!(judge(&set, "10.0.0.1", "192.168.0.1", 6, 1), drop_by(0));
    assert_eq!(judge(&set, "10.0.0.1", "192.168.0.1", 17, 1), drop_by(1));
}

#[test]
fn exception_is_an_accept_at_the_drop_priority() {
    let set = set_of(&[
        &[
            "name: allow",
            "source_groups: [a]",
            "destination_groups: [b]",
            "action: accept",
        ],
        &[
            "name: deny",
            "source_groups: [a]",
            "destination_groups: [b]",
            "action: drop",
            "exceptions:",
            "  - destination_ips: [192.168.1.0/24]",
            "    protocol: tcp",
            "    ports: [\"22\"]",
        ],
        &[
            "name: deny-ssh",
            "source_groups: [a]",
            "destination_groups: [b]",
            "action: drop",
            "protocol: tcp",
            "ports: [22]",
        ],
    ]);
    // The excepted drop is an accept; the other drop at the same priority beats it.
    assert_eq!(judge(&set, "10.0.0.1", "192.168.1.1", 6, 22), drop_by(2));
    // Elsewhere the drop policy decides, before the accept.
    assert_eq!(judge(&set, "10.0.0.1", "192.168.1.1", 6, 23), drop_by(1));
    let set = set_of(&[
        &[
            "name: allow",
            "source_groups: [a]",
            "destination_groups: [b]",
            "action: accept",
        ],
        &[
            "name: deny",
            "source_groups: [a]",
            "destination_groups: [b]",
            "action: drop",
            "exceptions:",
            "  - destination_ips: [192.168.1.0/24]",
        ],
    ]);
    // Excepted: accepts at equal priority go by file order.
    assert_eq!(judge(&set, "10.0.0.1", "192.168.1.1", 47, 0), accept(0));
    assert_eq!(judge(&set, "10.0.0.1", "192.168.2.1", 47, 0), drop_by(1));
}

#[test]
fn disabled_policies_are_ignored() {
    let set = set_of(&[
        &[
            "name: off",
            "enabled: false",
            "source_groups: [a]",
            "destination_groups: [b]",
            "action: drop",
            "priority: 1",
        ],
        &[
            "name: on",
            "source_groups: [a]",
            "destination_groups: [b]",
            "action: accept",
        ],
    ]);
    // The enabled policy is rule 0: ids count enabled policies only.
    assert_eq!(
        set.rules(),
        [RuleInfo {
            name: "on".into(),
            action: Action::Accept,
            priority: 100
        }]
    );
    assert_eq!(judge(&set, "10.0.0.1", "192.168.0.1", 6, 80), accept(0));
    let mut all_off = set.clone();
    all_off.policies[1].enabled = false;
    assert!(all_off.terms().is_empty());
    assert_eq!(
        judge(&all_off, "10.0.0.1", "192.168.0.1", 6, 80),
        DEFAULT_DENY
    );
}

#[test]
fn bidirectional_matches_the_reverse() {
    let one_way = set_of(&[&[
        "name: p",
        "source_groups: [a]",
        "destination_groups: [b]",
        "action: accept",
        "protocol: tcp",
        "ports: [\"443\"]",
    ]]);
    let both = set_of(&[&[
        "name: p",
        "source_groups: [a]",
        "destination_groups: [b]",
        "action: accept",
        "protocol: tcp",
        "ports: [\"443\"]",
        "bidirectional: true",
    ]]);
    assert_eq!(
        judge(&one_way, "10.0.0.1", "192.168.0.1", 6, 443),
        accept(0)
    );
    assert_eq!(
        judge(&one_way, "192.168.0.1", "10.0.0.1", 6, 443),
        DEFAULT_DENY
    );
    assert_eq!(judge(&both, "10.0.0.1", "192.168.0.1", 6, 443), accept(0));
    assert_eq!(judge(&both, "192.168.0.1", "10.0.0.1", 6, 443), accept(0));
    // The ports are still the destination ports in both directions.
    assert_eq!(
        judge(&both, "192.168.0.1", "10.0.0.1", 6, 444),
        DEFAULT_DENY
    );
    // destination_ips restrict the destination side in the forward direction and the source
    // side in the reverse one.
    let both = set_of(&[&[
        "name: p",
        "source_groups: [a]",
        "destination_groups: [b]",
        "action: accept",
        "destination_ips: [192.168.7.0/24]",
        "bidirectional: true",
    ]]);
    assert_eq!(judge(&both, "10.0.0.1", "192.168.7.1", 1, 0), accept(0));
    assert_eq!(judge(&both, "10.0.0.1", "192.168.8.1", 1, 0), DEFAULT_DENY);
    assert_eq!(judge(&both, "192.168.7.1", "10.0.0.1", 1, 0), accept(0));
    assert_eq!(judge(&both, "192.168.8.1", "10.0.0.1", 1, 0), DEFAULT_DENY);
}
