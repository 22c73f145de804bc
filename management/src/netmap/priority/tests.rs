use super::*;

fn g<'a>(
    id: &'a str,
    action: RuleAction,
    proto: Proto,
    ports: &[(u16, u16)],
    level: u32,
) -> Grant<'a> {
    Grant {
        rule_id: id,
        action,
        proto,
        ports: ports
            .iter()
            .map(|(s, e)| PortRange { start: *s, end: *e })
            .collect(),
        level,
    }
}

fn c<'a>(id: &'a str, action: RuleAction, proto: Proto, ports: Option<(u16, u16)>) -> Compiled<'a> {
    Compiled {
        rule_id: id,
        action,
        proto,
        ports: ports.map(|(s, e)| PortRange { start: s, end: e }),
    }
}

use RuleAction::{Accept, Drop};

#[test]
fn the_seed_acl_allow_container_ports_then_drop_the_overlay() {
    // allow tcp 6900, 443 (priority 0); drop all 1-65535 (priority 1000)
    let grants = [
        g("allow", Accept, Proto::Tcp, &[(6900, 6900), (443, 443)], 0),
        g("deny", Drop, Proto::All, &[], 1000),
    ];
    // The drop decides everything but the two ports: only the accepts need writing.
    assert_eq!(
        compile(&grants),
        vec![
            c("allow", Accept, Proto::Tcp, Some((443, 443))),
            c("allow", Accept, Proto::Tcp, Some((6900, 6900)))
        ]
    );
}

#[test]
fn a_lower_priority_accept_all_keeps_the_higher_drops_as_drops() {
    // drop tcp 22 (0); accept all (10): everything but tcp 22.
    let grants = [
        g("no-ssh", Drop, Proto::Tcp, &[(22, 22)], 0),
        g("any", Accept, Proto::All, &[], 10),
    ];
    assert_eq!(
        compile(&grants),
        vec![
            c("no-ssh", Drop, Proto::Tcp, Some((22, 22))),
            c("any", Accept, Proto::All, None)
        ]
    );
    // accept tcp 443 (0); drop all (5); accept all (10): only tcp 443; the rest is the drop's.
    let grants = [
        g("web", Accept, Proto::Tcp, &[(443, 443)], 0),
        g("deny", Drop, Proto::All, &[], 5),
        g("any", Accept, Proto::All, &[], 10),
    ];
    assert_eq!(
        compile(&grants),
        vec![c("web", Accept, Proto::Tcp, Some((443, 443)))]
    );
}

#[test]
fn at_one_level_drop_wins_and_ranges_merge_by_deciding_rule() {
    let grants = [
        g("a", Accept, Proto::Udp, &[(1, 100)], 3),
        g("d", Drop, Proto::Udp, &[(50, 60)], 3),
        g("b", Accept, Proto::Udp, &[(101, 200)], 7),
    ];
    assert_eq!(
        compile(&grants),
        vec![
            c("a", Accept, Proto::Udp, Some((1, 49))),
            c("a", Accept, Proto::Udp, Some((61, 100))),
            c("b", Accept, Proto::Udp, Some((101, 200)))
        ]
    );
}

#[test]
fn nothing_matches_nothing_is_written() {
    assert!(
        compile(&[
            g("d", Drop, Proto::All, &[], 0),
            g("a", Accept, Proto::Icmp, &[], 1)
        ])
        .is_empty()
    );
    assert_eq!(
        compile(&[
            g("a", Accept, Proto::Icmp, &[], 1),
            g("d", Drop, Proto::All, &[], 2)
        ]),
        vec![c("a", Accept, Proto::Icmp, None)]
    );
}
