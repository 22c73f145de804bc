//! The relay's configuration: its own YAML, or coturn's turnserver.conf for the options it
//! supports (so it can take coturn's place without touching clients). Options it does not
//! support are listed back: ignored ones (harmless here) and refused ones (the relay would
//! behave differently than coturn did: it will not start).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::Path,
};

use anyhow::{Context as _, bail};
use ipnet::IpNet;
use serde::Deserialize;

use crate::auth::Credentials;

pub const DEFAULT_PORT: u16 = 3478;
pub const DEFAULT_MIN_PORT: u16 = 49152;
pub const DEFAULT_MAX_PORT: u16 = 65535;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Where clients reach the relay (UDP).
    pub listen: Vec<SocketAddr>,
    /// The addresses allocations are made on (coturn's relay-ip), at most one per family: an
    /// allocation of a family takes that family's. Default: the listening addresses.
    #[serde(default, deserialize_with = "one_or_many")]
    pub relay_ip: Vec<IpAddr>,
    /// The public addresses behind a 1:1 NAT (coturn's external-ip), sent as the relayed address
    /// of an allocation of their family.
    #[serde(default, deserialize_with = "one_or_many")]
    pub external_ip: Vec<IpAddr>,
    pub realm: String,
    /// Static long-term users: name → password.
    #[serde(default)]
    pub users: HashMap<String, String>,
    /// Shared secret of time-limited credentials.
    #[serde(default)]
    pub static_auth_secret: Option<String>,
    #[serde(default = "default_min_port")]
    pub min_port: u16,
    #[serde(default = "default_max_port")]
    pub max_port: u16,
    /// Allocations per user (0: no limit).
    #[serde(default)]
    pub user_quota: u32,
    /// Allocations in total (0: no limit).
    #[serde(default)]
    pub total_quota: u32,
    /// Peers in these ranges are refused (on top of the defaults: loopback, unspecified,
    /// multicast, the relay's own addresses), unless an allowed range names them.
    #[serde(default)]
    pub denied_peer_ip: Vec<IpNet>,
    #[serde(default)]
    pub allowed_peer_ip: Vec<IpNet>,
    /// Prometheus /metrics and /status.
    #[serde(default)]
    pub metrics_addr: Option<SocketAddr>,
    /// Bound channels forwarded in XDP on these interfaces (those clients and peers arrive on).
    #[serde(default)]
    pub xdp: Option<XdpConfig>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdpConfig {
    /// Interfaces the relay attaches its own XDP program to.
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// xdp-native (default) or xdp-generic.
    #[serde(default = "default_xdp_attach")]
    pub attach: String,
    /// The pin folder of a `gateway run` on this host (its `pin_dir`, by default
    /// /sys/fs/bpf/gateway): the relay's program also runs after the gateway's underlay filter,
    /// on the frames the filter passes, for interfaces that carry the filter (an interface
    /// takes one XDP program).
    #[serde(default)]
    pub behind_gateway: Option<std::path::PathBuf>,
}

fn default_xdp_attach() -> String {
    "xdp-native".into()
}

/// An address or a list of them (`relay_ip: 198.18.31.1` as before, or one per family).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<IpAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(IpAddr),
        Many(Vec<IpAddr>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(ip) => vec![ip],
        OneOrMany::Many(v) => v,
    })
}

fn default_min_port() -> u16 {
    DEFAULT_MIN_PORT
}
fn default_max_port() -> u16 {
    DEFAULT_MAX_PORT
}

/// What coturn options the reader left out, and why.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CoturnReport {
    pub ignored: Vec<String>,
    pub refused: Vec<String>,
}

/// coturn options that change nothing here (TCP/TLS/DTLS listeners the relay does not open are
/// refused separately; these are logging, process and tuning knobs).
const IGNORED: &[&str] = &[
    "verbose",
    "Verbose",
    "log-file",
    "syslog",
    "simple-log",
    "no-stdout-log",
    "pidfile",
    "proc-user",
    "proc-group",
    "no-cli",
    "cli-ip",
    "cli-port",
    "cli-password",
    "fingerprint",
    "no-tcp",
    "no-tls",
    "no-dtls",
    "no-tcp-relay",
    "no-multicast-peers",
    "no-loopback-peers",
    "mobility",
    "no-software-attribute",
    "stale-nonce",
    "server-name",
    "prometheus",
    "new-log-timestamp",
    "log-binding",
];

impl RelayConfig {
    pub fn load_yaml(path: &Path) -> anyhow::Result<RelayConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let cfg: RelayConfig = serde_saphyr::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        cfg.validate()
            .with_context(|| format!("{}", path.display()))?;
        Ok(cfg)
    }

    /// Reads coturn's turnserver.conf.
    pub fn from_coturn(text: &str) -> anyhow::Result<(RelayConfig, CoturnReport)> {
        let mut report = CoturnReport::default();
        let mut ports = vec![DEFAULT_PORT];
        let mut ips: Vec<IpAddr> = Vec::new();
        let mut cfg = RelayConfig {
            listen: vec![],
            relay_ip: vec![],
            external_ip: vec![],
            realm: String::new(),
            users: HashMap::new(),
            static_auth_secret: None,
            min_port: DEFAULT_MIN_PORT,
            max_port: DEFAULT_MAX_PORT,
            user_quota: 0,
            total_quota: 0,
            denied_peer_ip: vec![],
            allowed_peer_ip: vec![],
            metrics_addr: None,
            xdp: None,
        };
        let (mut lt_cred, mut auth_secret) = (false, false);
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = match line.split_once('=') {
                Some((k, v)) => (k.trim(), v.trim().trim_matches('"')),
                None => (line, ""),
            };
            let at = || format!("turnserver.conf line {}: {key}", n + 1);
            match key {
                "listening-port" => ports = vec![value.parse().with_context(at)?],
                "listening-ip" => ips.push(value.parse().with_context(at)?),
                "relay-ip" => cfg.relay_ip.push(value.parse().with_context(at)?),
                "external-ip" => {
                    // "public" or "public/private"; one line per family.
                    cfg.external_ip.push(
                        value
                            .split('/')
                            .next()
                            .unwrap_or(value)
                            .parse()
                            .with_context(at)?,
                    )
                }
                "realm" => cfg.realm = value.to_string(),
                "lt-cred-mech" => lt_cred = true,
                "user" => {
                    let (u, p) = value
                        .split_once(':')
                        .with_context(|| format!("{}: expected name:password", at()))?;
                    cfg.users.insert(u.to_string(), p.to_string());
                }
                "use-auth-secret" => auth_secret = true,
                "static-auth-secret" => cfg.static_auth_secret = Some(value.to_string()),
                "min-port" => cfg.min_port = value.parse().with_context(at)?,
                "max-port" => cfg.max_port = value.parse().with_context(at)?,
                "user-quota" => cfg.user_quota = value.parse().with_context(at)?,
                "total-quota" => cfg.total_quota = value.parse().with_context(at)?,
                "denied-peer-ip" => cfg.denied_peer_ip.push(range(value).with_context(at)?),
                "allowed-peer-ip" => cfg.allowed_peer_ip.push(range(value).with_context(at)?),
                k if IGNORED.contains(&k) => report.ignored.push(k.to_string()),
                k => report.refused.push(k.to_string()),
            }
        }
        if !report.refused.is_empty() {
            bail!(
                "coturn options this relay does not support: {} (remove them, or keep coturn)",
                report.refused.join(", ")
            );
        }
        if auth_secret && cfg.static_auth_secret.is_none() {
            bail!(
                "use-auth-secret without static-auth-secret (secrets in a database are not supported)"
            );
        }
        if !auth_secret {
            cfg.static_auth_secret = None;
        }
        if !lt_cred && !auth_secret {
            bail!("neither lt-cred-mech nor use-auth-secret: this relay always authenticates");
        }
        if ips.is_empty() {
            ips.push(IpAddr::from([0, 0, 0, 0]));
        }
        cfg.listen = ips
            .iter()
            .flat_map(|ip| ports.iter().map(move |p| SocketAddr::new(*ip, *p)))
            .collect();
        cfg.validate()?;
        Ok((cfg, report))
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.listen.is_empty() {
            bail!("listen: at least one address");
        }
        if self.realm.is_empty() {
            bail!("realm: required (long-term credentials are bound to it)");
        }
        if self.users.is_empty() && self.static_auth_secret.is_none() {
            bail!("no credentials: name users or a static_auth_secret");
        }
        for (what, ips) in [
            ("relay_ip", &self.relay_ip),
            ("external_ip", &self.external_ip),
        ] {
            if ips.iter().filter(|ip| ip.is_ipv4()).count() > 1
                || ips.iter().filter(|ip| ip.is_ipv6()).count() > 1
            {
                bail!("{what}: at most one address per family");
            }
            if let Some(ip) = ips.iter().find(|ip| ip.is_unspecified()) {
                bail!("{what}: {ip} is not an address peers can reach");
            }
        }
        if self.min_port == 0 || self.min_port > self.max_port {
            bail!(
                "min_port {} / max_port {}: a range of ports",
                self.min_port,
                self.max_port
            );
        }
        Ok(())
    }

    pub fn credentials(&self) -> Credentials {
        Credentials {
            realm: self.realm.clone(),
            users: self.users.clone(),
            secret: self.static_auth_secret.clone(),
        }
    }
}

/// coturn's peer ranges: an address, a CIDR, or `first-last` (taken as the covering CIDRs'
/// first: a range that is not one CIDR is refused).
fn range(v: &str) -> anyhow::Result<IpNet> {
    if let Some((a, b)) = v.split_once('-') {
        let (a, b): (IpAddr, IpAddr) = (a.trim().parse()?, b.trim().parse()?);
        for len in 0..=if a.is_ipv4() { 32 } else { 128 } {
            let net = IpNet::new(a, len)?.trunc();
            if net.network() == a && net.broadcast() == b {
                return Ok(net);
            }
        }
        bail!("{v}: a range that is not one CIDR block");
    }
    if let Ok(ip) = v.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Ok(v.parse::<IpNet>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coturn_configuration_is_read_and_unknown_options_refused() {
        let conf = "# NetBird's coturn\nlistening-port=3478\nlistening-ip=198.18.30.1\nrelay-ip=198.18.31.1\nexternal-ip=203.0.113.5/198.18.30.1\nrealm=wiretrustee.com\n\
                    fingerprint\nlt-cred-mech\nuser=self:secretpw\nmin-port=49152\nmax-port=49200\nuser-quota=10\ntotal-quota=100\nno-cli\n\
                    denied-peer-ip=10.0.0.0-10.255.255.255\nallowed-peer-ip=10.1.2.3\n";
        let (c, report) = RelayConfig::from_coturn(conf).unwrap();
        assert_eq!(
            c.listen,
            vec!["198.18.30.1:3478".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.relay_ip, vec!["198.18.31.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            c.external_ip,
            vec!["203.0.113.5".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(c.users.get("self").map(String::as_str), Some("secretpw"));
        assert_eq!(
            (c.min_port, c.max_port, c.user_quota, c.total_quota),
            (49152, 49200, 10, 100)
        );
        assert_eq!(
            c.denied_peer_ip,
            vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]
        );
        assert_eq!(report.ignored, vec!["fingerprint", "no-cli"]);
        let e =
            RelayConfig::from_coturn("realm=r\nlt-cred-mech\nuser=a:b\ntls-listening-port=5349\n")
                .unwrap_err();
        assert!(e.to_string().contains("tls-listening-port"), "{e}");
        let (c, _) =
            RelayConfig::from_coturn("realm=r\nuse-auth-secret\nstatic-auth-secret=s3\n").unwrap();
        assert_eq!(c.static_auth_secret.as_deref(), Some("s3"));
        assert!(
            RelayConfig::from_coturn("realm=r\n").is_err(),
            "no auth at all"
        );
        // One relay-ip line per family; two of one family are refused.
        let (c, _) = RelayConfig::from_coturn(
            "realm=r\nlt-cred-mech\nuser=a:b\nrelay-ip=198.18.31.1\nrelay-ip=fd00:31::1\n",
        )
        .unwrap();
        assert_eq!(
            c.relay_ip,
            vec![
                "198.18.31.1".parse::<IpAddr>().unwrap(),
                "fd00:31::1".parse().unwrap()
            ]
        );
        let e = RelayConfig::from_coturn(
            "realm=r\nlt-cred-mech\nuser=a:b\nrelay-ip=198.18.31.1\nrelay-ip=198.18.31.2\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("one address per family"), "{e}");
    }

    #[test]
    fn yaml_takes_one_relay_address_or_one_per_family() {
        let base = "listen: [198.18.30.1:3478]\nrealm: r\nusers: {a: b}\n";
        let one: RelayConfig =
            serde_saphyr::from_str(&format!("{base}relay_ip: 198.18.31.1\n")).unwrap();
        assert_eq!(one.relay_ip, vec!["198.18.31.1".parse::<IpAddr>().unwrap()]);
        let both: RelayConfig =
            serde_saphyr::from_str(&format!("{base}relay_ip: [198.18.31.1, 'fd00:31::1']\n"))
                .unwrap();
        assert_eq!(both.relay_ip.len(), 2);
        assert!(both.validate().is_ok());
        let none: RelayConfig = serde_saphyr::from_str(base).unwrap();
        assert!(none.relay_ip.is_empty() && none.external_ip.is_empty());
    }
}
