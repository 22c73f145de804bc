//! Changes to the account, each validated whole before anything is modified, so a rejected change
//! leaves the account as it was. Every change returns the objects it touched (for the store) and
//! raises the serial.

use std::{
    collections::{BTreeSet, HashSet},
    net::{IpAddr, Ipv4Addr},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rand::Rng;

use crate::{
    activity::{Activity, Initiator, Record},
    error::{Error, Result, invalid, not_found},
    model::*,
    store::{Kind, Touched},
};

/// A new random object id: 20 lowercase base32 characters, like NetBird's xids.
pub fn new_id() -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuv";
    let mut rng = rand::rng();
    (0..20)
        .map(|_| ALPHABET[rng.random_range(0..32)] as char)
        .collect()
}

/// A new setup-key secret: an uppercase random (v4) UUID, the form NetBird hands out.
pub fn new_setup_key_secret() -> String {
    let mut b: [u8; 16] = rand::rng().random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02X}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// How a setup key is stored: base64(SHA-256) of the secret as NetBird writes it (an uppercase
/// UUID); a secret typed in lowercase still matches.
pub fn hash_setup_key(secret: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(
        secret.trim().to_ascii_uppercase().as_bytes(),
    ))
}

impl SetupKey {
    /// Stores `secret` as its hash and the prefix the API shows.
    pub fn set_secret(&mut self, secret: &str) {
        self.hashed_key = hash_setup_key(secret);
        self.key_prefix = secret.trim().chars().take(5).collect();
        self.legacy_key = None;
    }
}

/// The built-in group that holds every peer (NetBird's `All`): it cannot be renamed, edited or
/// deleted, and policies may name it.
pub const ALL_GROUP: &str = "All";

fn touched(items: impl IntoIterator<Item = (Kind, String)>) -> Touched {
    items.into_iter().collect()
}

fn check_name(what: &str, name: &str) -> Result<()> {
    if name.trim().is_empty() {
        return invalid(format!("{what} name must not be empty"));
    }
    if name.len() > 255 {
        return invalid(format!("{what} name is longer than 255 characters"));
    }
    Ok(())
}

/// Facts a peer reports about itself at login.
#[derive(Clone, Debug, Default)]
pub struct PeerMeta {
    pub hostname: String,
    pub os: String,
    pub kernel_version: String,
    pub version: String,
    /// Announced the IPv6 overlay capability and did not disable IPv6.
    pub supports_ipv6: bool,
}

/// What an operator gives for a peer created through the API.
#[derive(Clone, Debug, Default)]
pub struct ProvisionedPeer {
    pub name: String,
    pub hostname: String,
    pub wg_pub_key: String,
    /// Group ids or names.
    pub groups: Vec<String>,
    pub ssh_enabled: bool,
    pub login_expiration_enabled: bool,
    pub login_expires_at: UnixTime,
    pub approval_required: bool,
    pub labels: std::collections::BTreeMap<String, String>,
}

/// A random host address of `net` that is not in `used` (a /64 has room for every peer).
fn random_free_v6(net: Ipv6Net, used: &HashSet<std::net::Ipv6Addr>) -> std::net::Ipv6Addr {
    let host_mask = u128::MAX
        .checked_shr(u32::from(net.prefix_len()))
        .unwrap_or(0);
    let mut rng = rand::rng();
    loop {
        let host = rng.random::<u128>() & host_mask;
        let ip = std::net::Ipv6Addr::from(u128::from(net.network()) | host);
        if host != 0 && !used.contains(&ip) {
            return ip;
        }
    }
}

/// What an update of a peer changed, as NetBird's activities name it.
fn peer_changes(old: &Peer, new: &Peer) -> Vec<Record> {
    let mut out = Vec::new();
    let mut add = |activity, extra: Option<(&'static str, String)>| {
        out.push(Record::new(
            activity,
            &new.id,
            peer_meta(new).into_iter().chain(extra),
        ))
    };
    if old.name != new.name {
        add(Activity::PeerRenamed, Some(("old_name", old.name.clone())));
    }
    if old.ip != new.ip {
        add(
            Activity::PeerIpUpdated,
            Some(("old_ip", old.ip.to_string())),
        );
    }
    if old.ipv6 != new.ipv6 {
        let was = old.ipv6.map(|a| a.to_string()).unwrap_or_default();
        add(Activity::PeerIpUpdated, Some(("old_ipv6", was)));
    }
    if old.ssh_enabled != new.ssh_enabled {
        add(
            if new.ssh_enabled {
                Activity::PeerSshEnabled
            } else {
                Activity::PeerSshDisabled
            },
            None,
        );
    }
    // A new expiry while expiration is on is logged as (re-)enabling it, with the new time.
    let expires = || Some(("expires_at", new.login_expires_at.to_string()));
    match (old.login_expiration_enabled, new.login_expiration_enabled) {
        (false, true) => add(Activity::PeerLoginExpirationEnabled, expires()),
        (true, false) => add(Activity::PeerLoginExpirationDisabled, None),
        (true, true) if old.login_expires_at != new.login_expires_at => {
            add(Activity::PeerLoginExpirationEnabled, expires())
        }
        _ => {}
    }
    match (old.approval_required, new.approval_required) {
        (true, false) => add(Activity::PeerApproved, None),
        (false, true) => add(Activity::PeerApprovalRevoked, None),
        _ => {}
    }
    out
}

/// A DNS label from a hostname: lowercase letters, digits and dashes.
fn dns_label(hostname: &str) -> String {
    let label: String = hostname
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .trim_matches('-')
        .chars()
        .take(63)
        .collect();
    if label.is_empty() {
        "peer".into()
    } else {
        label
    }
}

/// The details NetBird's events carry about a peer.
fn peer_meta(p: &Peer) -> [(&'static str, String); 3] {
    [
        ("name", p.name.clone()),
        ("ip", p.ip.to_string()),
        ("dns_label", p.dns_label.clone()),
    ]
}

fn name_meta(name: &str) -> [(&'static str, String); 1] {
    [("name", name.to_string())]
}

impl Account {
    fn bump(&mut self, t: Touched) -> Touched {
        self.serial += 1;
        t
    }

    /// Notes one thing the change in progress did, for the activity log.
    fn note(&mut self, record: Record) {
        self.journal.push(record);
    }

    pub fn peer_by_key(&self, wg_pub_key: &str) -> Option<&Peer> {
        self.peers.values().find(|p| p.wg_pub_key == wg_pub_key)
    }

    pub fn setup_key_by_secret(&self, secret: &str) -> Option<&SetupKey> {
        let hashed = hash_setup_key(secret);
        self.setup_keys.values().find(|k| k.hashed_key == hashed)
    }

    pub fn all_group_id(&self) -> Option<&str> {
        self.groups
            .values()
            .find(|g| g.name == ALL_GROUP)
            .map(|g| g.id.as_str())
    }

    /// Creates the `All` group if it is missing and puts every peer in it; converts setup keys
    /// stored in the clear by earlier versions to their hash. Run when the service opens.
    pub fn repair(&mut self) -> Touched {
        let mut t = Touched::new();
        let id = match self.all_group_id() {
            Some(id) => id.to_string(),
            None => {
                let g = Group {
                    id: new_id(),
                    name: ALL_GROUP.into(),
                    peers: vec![],
                    resources: vec![],
                };
                self.groups.insert(g.id.clone(), g.clone());
                t.insert((Kind::Group, g.id.clone()));
                g.id
            }
        };
        let all = self.groups.get_mut(&id).expect("just ensured");
        for p in self.peers.keys() {
            if !all.peers.contains(p) {
                all.peers.push(p.clone());
                t.insert((Kind::Group, id.clone()));
            }
        }
        for k in self.setup_keys.values_mut() {
            if let Some(secret) = k.legacy_key.clone() {
                k.set_secret(&secret);
                t.insert((Kind::SetupKey, k.id.clone()));
            }
        }
        if !t.is_empty() {
            self.serial += 1;
        }
        t
    }

    /// Group ids from ids or names (API clients use both, as the seed's backend does).
    pub fn resolve_groups(&self, refs: &[String], field: &str) -> Result<Vec<String>> {
        let mut out = Vec::with_capacity(refs.len());
        for r in refs {
            let id = if self.groups.contains_key(r) {
                r.clone()
            } else if let Some(g) = self.groups.values().find(|g| g.name == *r) {
                g.id.clone()
            } else {
                return invalid(format!("{field}: group {r} does not exist"));
            };
            if !out.contains(&id) {
                out.push(id);
            }
        }
        Ok(out)
    }

    fn add_to_groups(&mut self, peer_id: &str, groups: &[String], t: &mut Touched) {
        let all = self.all_group_id().map(str::to_string);
        for gid in groups.iter().chain(all.iter()) {
            if let Some(g) = self.groups.get_mut(gid)
                && !g.peers.iter().any(|p| p == peer_id)
            {
                g.peers.push(peer_id.to_string());
                t.insert((Kind::Group, gid.clone()));
            }
        }
    }

    fn check_groups(&self, ids: &[String], field: &str) -> Result<()> {
        for id in ids {
            if !self.groups.contains_key(id) {
                return invalid(format!("{field}: group {id} does not exist"));
            }
        }
        Ok(())
    }

    fn check_peers(&self, ids: &[String], field: &str) -> Result<()> {
        for id in ids {
            if !self.peers.contains_key(id) {
                return invalid(format!("{field}: peer {id} does not exist"));
            }
        }
        Ok(())
    }

    fn check_resource_ref(&self, r: &ResourceRef, field: &str) -> Result<()> {
        let exists = match r.kind {
            ResourceKind::Peer => self.peers.contains_key(&r.id),
            _ => self.resources.contains_key(&r.id),
        };
        if !exists {
            return invalid(format!("{field}: resource {} does not exist", r.id));
        }
        Ok(())
    }

    // ---- setup keys ----

    pub fn put_setup_key(&mut self, key: SetupKey) -> Result<Touched> {
        check_name("setup key", &key.name)?;
        self.check_groups(&key.auto_groups, "auto_groups")?;
        let id = key.id.clone();
        let activity = match self.setup_keys.get(&id) {
            None => Activity::SetupKeyCreated,
            Some(old) if !old.revoked && key.revoked => Activity::SetupKeyRevoked,
            Some(_) => Activity::SetupKeyUpdated,
        };
        self.note(Record::new(activity, &id, name_meta(&key.name)));
        self.setup_keys.insert(id.clone(), key);
        Ok(self.bump(touched([(Kind::SetupKey, id)])))
    }

    pub fn delete_setup_key(&mut self, id: &str) -> Result<Touched> {
        let Some(key) = self.setup_keys.remove(id) else {
            return not_found("setup key", id);
        };
        self.note(Record::new(
            Activity::SetupKeyDeleted,
            id,
            name_meta(&key.name),
        ));
        Ok(self.bump(touched([(Kind::SetupKey, id.to_string())])))
    }

    // ---- peers ----

    /// A free overlay address in `network`, picked at random as NetBird does (so addresses do not
    /// reveal registration order), never the network or broadcast address.
    fn allocate_ip(&self, network: Ipv4Net) -> Result<Ipv4Addr> {
        let used: BTreeSet<Ipv4Addr> = self.peers.values().map(|p| p.ip).collect();
        let first = u32::from(network.network()) + 1;
        let last = u32::from(network.broadcast()).saturating_sub(1);
        if last < first {
            return invalid(format!("network {network} has no room for peers"));
        }
        let size = (last - first + 1) as usize;
        if used.len() >= size {
            return Err(Error::Internal(anyhow::anyhow!(
                "network {network} is full"
            )));
        }
        let mut rng = rand::rng();
        loop {
            let ip = Ipv4Addr::from(rng.random_range(first..=last));
            if !used.contains(&ip) {
                return Ok(ip);
            }
        }
    }

    /// A free address in the IPv6 overlay range, at random as NetBird picks them; `None` when
    /// there is no IPv6 overlay.
    fn allocate_ipv6(&self) -> Option<std::net::Ipv6Addr> {
        let used: HashSet<std::net::Ipv6Addr> =
            self.peers.values().filter_map(|p| p.ipv6).collect();
        Some(random_free_v6(self.network_v6?, &used))
    }

    /// Sets the IPv6 overlay range and gives every peer without an address in it one.
    pub fn set_network_v6(&mut self, net: Option<Ipv6Net>) -> Touched {
        let mut t = Touched::new();
        let changed = self.network_v6 != net;
        self.network_v6 = net;
        if let Some(net) = net {
            let mut used: HashSet<std::net::Ipv6Addr> = self
                .peers
                .values()
                .filter_map(|p| p.ipv6)
                .filter(|a| net.contains(a))
                .collect();
            for p in self
                .peers
                .values_mut()
                .filter(|p| !p.ipv6.is_some_and(|a| net.contains(&a)))
            {
                let ip = random_free_v6(net, &used);
                used.insert(ip);
                p.ipv6 = Some(ip);
                t.insert((Kind::Peer, p.id.clone()));
            }
        }
        if changed || !t.is_empty() {
            self.serial += 1;
        }
        t
    }

    /// Registers a new peer with a setup key: checks the key, allocates an address, puts the
    /// peer into the key's auto groups and counts the use.
    pub fn register_peer(
        &mut self,
        secret: &str,
        wg_pub_key: &str,
        meta: &PeerMeta,
        network: Ipv4Net,
        now: UnixTime,
    ) -> Result<(Peer, Touched)> {
        let Some(key) = self.setup_key_by_secret(secret) else {
            return Err(Error::PermissionDenied("invalid setup key".into()));
        };
        match key.state(now) {
            SetupKeyState::Valid => {}
            state => {
                return Err(Error::PermissionDenied(format!(
                    "setup key is {}",
                    state.as_str()
                )));
            }
        }
        if self.peer_by_key(wg_pub_key).is_some() {
            return invalid("peer is already registered");
        }
        let key = key.clone();
        let ip = self.allocate_ip(network)?;
        let mut label = dns_label(&meta.hostname);
        if self.peers.values().any(|p| p.dns_label == label) {
            label = format!("{label}-{}", ip.to_string().replace('.', "-"));
        }
        let peer = Peer {
            id: new_id(),
            name: if meta.hostname.is_empty() {
                label.clone()
            } else {
                meta.hostname.clone()
            },
            wg_pub_key: wg_pub_key.to_string(),
            ip,
            hostname: meta.hostname.clone(),
            os: meta.os.clone(),
            kernel_version: meta.kernel_version.clone(),
            version: meta.version.clone(),
            dns_label: label,
            ephemeral: key.ephemeral,
            setup_key_id: key.id.clone(),
            ssh_enabled: false,
            login_expiration_enabled: false,
            inactivity_expiration_enabled: false,
            approval_required: false,
            created_at: now,
            last_seen: now,
            last_login: now,
            ipv6: self.allocate_ipv6(),
            supports_ipv6: meta.supports_ipv6,
            ..Peer::blank()
        };
        let mut t = touched([
            (Kind::Peer, peer.id.clone()),
            (Kind::SetupKey, key.id.clone()),
        ]);
        self.add_to_groups(&peer.id, &key.auto_groups, &mut t);
        let stored = self.setup_keys.get_mut(&key.id).expect("checked above");
        stored.used_times += 1;
        stored.last_used = now;
        self.peers.insert(peer.id.clone(), peer.clone());
        let by = Initiator::SetupKey {
            id: key.id.clone(),
            name: key.name.clone(),
        };
        self.note(Record::new(Activity::PeerAddedWithSetupKey, &peer.id, peer_meta(&peer)).by(by));
        Ok((peer, self.bump(t)))
    }

    /// A login of a registered peer: refreshes what it reports and when it was seen. Does not
    /// change any network map, so the serial stays.
    pub fn login_peer(&mut self, peer_id: &str, meta: &PeerMeta, now: UnixTime) -> Result<Touched> {
        let Some(p) = self.peers.get_mut(peer_id) else {
            return not_found("peer", peer_id);
        };
        if !meta.hostname.is_empty() {
            p.hostname = meta.hostname.clone();
        }
        p.os = meta.os.clone();
        p.kernel_version = meta.kernel_version.clone();
        p.version = meta.version.clone();
        p.last_seen = now;
        p.last_login = now;
        // What the peer supports shapes its own map: a change raises the serial.
        let capabilities_changed =
            std::mem::replace(&mut p.supports_ipv6, meta.supports_ipv6) != meta.supports_ipv6;
        let record = Record::new(Activity::UserLoggedInPeer, peer_id, peer_meta(p));
        self.note(record);
        let t = touched([(Kind::Peer, peer_id.to_string())]);
        Ok(if capabilities_changed {
            self.bump(t)
        } else {
            t
        })
    }

    /// Records where the peer's Login came from; touches nothing when it is unchanged.
    pub fn set_connection_ip(&mut self, peer_id: &str, ip: &str) -> Touched {
        match self.peers.get_mut(peer_id) {
            Some(p) if p.connection_ip != ip => {
                p.connection_ip = ip.to_string();
                touched([(Kind::Peer, peer_id.to_string())])
            }
            _ => Touched::new(),
        }
    }

    pub fn touch_peer(&mut self, peer_id: &str, now: UnixTime) -> Touched {
        match self.peers.get_mut(peer_id) {
            Some(p) => {
                p.last_seen = now;
                touched([(Kind::Peer, peer_id.to_string())])
            }
            None => Touched::new(),
        }
    }

    pub fn update_peer(&mut self, peer: Peer) -> Result<Touched> {
        check_name("peer", &peer.name)?;
        let Some(old) = self.peers.get(&peer.id) else {
            return not_found("peer", &peer.id);
        };
        if old.ip != peer.ip && self.peers.values().any(|p| p.ip == peer.ip) {
            return invalid(format!("ip {} is already used by another peer", peer.ip));
        }
        if let Some(v6) = peer.ipv6.filter(|v6| old.ipv6 != Some(*v6))
            && self.peers.values().any(|p| p.ipv6 == Some(v6))
        {
            return invalid(format!("ipv6 {v6} is already used by another peer"));
        }
        let id = peer.id.clone();
        for record in peer_changes(old, &peer) {
            self.note(record);
        }
        self.peers.insert(id.clone(), peer);
        Ok(self.bump(touched([(Kind::Peer, id)])))
    }

    /// Deletes a peer and every reference to it (group memberships, routers it was).
    pub fn delete_peer(&mut self, id: &str) -> Result<Touched> {
        let Some(peer) = self.peers.remove(id) else {
            return not_found("peer", id);
        };
        self.note(Record::new(
            Activity::PeerRemovedByUser,
            id,
            peer_meta(&peer),
        ));
        let mut t = touched([(Kind::Peer, id.to_string())]);
        for g in self.groups.values_mut() {
            let before = g.peers.len();
            g.peers.retain(|p| p != id);
            g.resources
                .retain(|r| !(r.kind == ResourceKind::Peer && r.id == id));
            if g.peers.len() != before {
                t.insert((Kind::Group, g.id.clone()));
            }
        }
        let gone: Vec<String> = self
            .routers
            .values()
            .filter(|r| r.peer.as_deref() == Some(id))
            .map(|r| r.id.clone())
            .collect();
        for rid in gone {
            self.routers.remove(&rid);
            t.insert((Kind::Router, rid));
        }
        for policy in self.policies.values_mut() {
            let mut changed = false;
            for rule in &mut policy.rules {
                for end in [&mut rule.source_resource, &mut rule.destination_resource] {
                    if end
                        .as_ref()
                        .is_some_and(|r| r.kind == ResourceKind::Peer && r.id == id)
                    {
                        *end = None;
                        changed = true;
                    }
                }
            }
            if changed {
                t.insert((Kind::Policy, policy.id.clone()));
            }
        }
        for acl in self.acls.values_mut() {
            let mut changed = false;
            for rule in &mut acl.rules {
                for list in [&mut rule.source_peers, &mut rule.destination_peers] {
                    let before = list.len();
                    list.retain(|p| p != id);
                    changed |= list.len() != before;
                }
            }
            if changed {
                t.insert((Kind::Acl, acl.id.clone()));
            }
        }
        Ok(self.bump(t))
    }

    /// A peer an operator creates before any client runs (`POST /api/peers`), with the public key
    /// it will log in with; it joins `groups` and `All`.
    pub fn provision_peer(
        &mut self,
        p: ProvisionedPeer,
        network: Ipv4Net,
        now: UnixTime,
    ) -> Result<(Peer, Touched)> {
        check_name("peer", &p.name)?;
        if self.peer_by_key(&p.wg_pub_key).is_some() {
            return Err(Error::Conflict(
                "a peer with this public key already exists".into(),
            ));
        }
        let groups = self.resolve_groups(&p.groups, "groups")?;
        if p.login_expiration_enabled && p.login_expires_at != 0 && p.login_expires_at <= now {
            return invalid("login_expiration is in the past");
        }
        let ip = self.allocate_ip(network)?;
        let hostname = if p.hostname.is_empty() {
            p.name.clone()
        } else {
            p.hostname.clone()
        };
        let mut label = dns_label(&hostname);
        if self.peers.values().any(|q| q.dns_label == label) {
            label = format!("{label}-{}", ip.to_string().replace('.', "-"));
        }
        let peer = Peer {
            id: new_id(),
            name: p.name,
            wg_pub_key: p.wg_pub_key,
            ip,
            hostname,
            dns_label: label,
            ssh_enabled: p.ssh_enabled,
            login_expiration_enabled: p.login_expiration_enabled,
            login_expires_at: if p.login_expiration_enabled {
                p.login_expires_at
            } else {
                0
            },
            approval_required: p.approval_required,
            labels: p.labels,
            created_at: now,
            ipv6: self.allocate_ipv6(),
            ..Peer::blank()
        };
        let mut t = touched([(Kind::Peer, peer.id.clone())]);
        self.add_to_groups(&peer.id, &groups, &mut t);
        self.peers.insert(peer.id.clone(), peer.clone());
        self.note(Record::new(
            Activity::PeerAddedByUser,
            &peer.id,
            peer_meta(&peer),
        ));
        Ok((peer, self.bump(t)))
    }

    // ---- ACLs ----

    /// Adds or replaces an ACL after checking every reference; `network` bounds destination_ips.
    pub fn put_acl(&mut self, acl: Acl, network: Ipv4Net) -> Result<Touched> {
        check_name("acl", &acl.name)?;
        if acl.rules.is_empty() {
            return invalid("an acl needs at least one rule");
        }
        for (i, r) in acl.rules.iter().enumerate() {
            let at = |field: &str| format!("rules[{i}].{field}");
            check_name("rule", &r.name)
                .map_err(|e| Error::Invalid(format!("{}: {e}", at("name"))))?;
            self.check_peers(&r.source_peers, &at("source_peers"))?;
            self.check_peers(&r.destination_peers, &at("destination_peers"))?;
            self.check_groups(&r.source_groups, &at("source_groups"))?;
            self.check_groups(&r.destination_groups, &at("destination_groups"))?;
            if let Some(n) = r.destination_ips.iter().find(|n| !network.contains(*n)) {
                return invalid(format!(
                    "{}: {n} is outside the overlay network {network} (only peers' addresses can be named)",
                    at("destination_ips")
                ));
            }
            if r.source_peers.is_empty() && r.source_groups.is_empty() {
                return invalid(format!(
                    "{}: a rule needs source_peers or source_groups",
                    at("source_peers")
                ));
            }
            if r.destination_peers.is_empty()
                && r.destination_groups.is_empty()
                && r.destination_ips.is_empty()
            {
                return invalid(format!(
                    "{}: a rule needs destination_ips, destination_peers or destination_groups",
                    at("destination_ips")
                ));
            }
            if !r.protocol.has_ports()
                && !r.ports.is_empty()
                && !r.ports.iter().all(|p| (p.start, p.end) == (1, 65535))
            {
                return invalid(format!("{}: ports apply only to tcp and udp", at("ports")));
            }
        }
        let id = acl.id.clone();
        let activity = if self.acls.contains_key(&id) {
            Activity::RuleUpdated
        } else {
            Activity::RuleAdded
        };
        self.note(Record::new(
            activity,
            &id,
            [("name", acl.name.clone()), ("kind", "acl".into())],
        ));
        self.acls.insert(id.clone(), acl);
        Ok(self.bump(touched([(Kind::Acl, id)])))
    }

    pub fn delete_acl(&mut self, id: &str) -> Result<Touched> {
        let Some(acl) = self.acls.remove(id) else {
            return not_found("acl", id);
        };
        self.note(Record::new(
            Activity::RuleRemoved,
            id,
            [("name", acl.name), ("kind", "acl".into())],
        ));
        Ok(self.bump(touched([(Kind::Acl, id.to_string())])))
    }

    /// What time ends: peers whose login expired leave every map; ACLs past `expires_at` are
    /// deleted (`auto_cleanup`) or disabled. Also returns what happened, for the log.
    pub fn expire(&mut self, now: UnixTime) -> (Vec<String>, Touched) {
        let mut t = Touched::new();
        let mut what = Vec::new();
        for p in self.peers.values_mut() {
            if p.login_expiration_enabled
                && p.login_expires_at != 0
                && now >= p.login_expires_at
                && !p.login_expired
            {
                p.login_expired = true;
                t.insert((Kind::Peer, p.id.clone()));
                what.push(format!("peer {} ({}): login expired", p.name, p.id));
                self.journal
                    .push(Record::new(Activity::PeerLoginExpired, &p.id, peer_meta(p)));
            }
        }
        let due: Vec<(String, bool)> = self
            .acls
            .values()
            .filter(|a| a.expires_at != 0 && now >= a.expires_at && (a.enabled || a.auto_cleanup))
            .map(|a| (a.id.clone(), a.auto_cleanup))
            .collect();
        for (id, cleanup) in due {
            if cleanup {
                let acl = self.acls.remove(&id).expect("listed above");
                what.push(format!("acl {} ({id}): expired, deleted", acl.name));
                self.journal.push(Record::new(
                    Activity::RuleRemoved,
                    &id,
                    [
                        ("name", acl.name),
                        ("kind", "acl".into()),
                        ("reason", "expired".into()),
                    ],
                ));
            } else {
                let acl = self.acls.get_mut(&id).expect("listed above");
                acl.enabled = false;
                what.push(format!("acl {} ({id}): expired, disabled", acl.name));
                self.journal.push(Record::new(
                    Activity::RuleUpdated,
                    &id,
                    [
                        ("name", acl.name.clone()),
                        ("kind", "acl".into()),
                        ("reason", "expired, disabled".into()),
                    ],
                ));
            }
            t.insert((Kind::Acl, id));
        }
        if !t.is_empty() {
            self.serial += 1;
        }
        (what, t)
    }

    // ---- groups ----

    pub fn put_group(&mut self, group: Group) -> Result<Touched> {
        check_name("group", &group.name)?;
        if self
            .groups
            .get(&group.id)
            .is_some_and(|g| g.name == ALL_GROUP)
        {
            return invalid("updating group All is not allowed");
        }
        if self
            .groups
            .values()
            .any(|g| g.name == group.name && g.id != group.id)
        {
            return Err(Error::Conflict(format!(
                "a group named {:?} already exists",
                group.name
            )));
        }
        self.check_peers(&group.peers, "peers")?;
        for r in &group.resources {
            self.check_resource_ref(r, "resources")?;
        }
        let mut group = group;
        let mut seen = BTreeSet::new();
        group.peers.retain(|p| seen.insert(p.clone()));
        let id = group.id.clone();
        let activity = if self.groups.contains_key(&id) {
            Activity::GroupUpdated
        } else {
            Activity::GroupCreated
        };
        self.note(Record::new(activity, &id, name_meta(&group.name)));
        self.groups.insert(id.clone(), group);
        Ok(self.bump(touched([(Kind::Group, id)])))
    }

    /// Where a group is still referred to, so deleting it would silently change access.
    fn group_users(&self, id: &str) -> Option<String> {
        for p in self.policies.values() {
            if p.rules
                .iter()
                .any(|r| r.sources.iter().chain(&r.destinations).any(|g| g == id))
            {
                return Some(format!("policy {}", p.name));
            }
        }
        if let Some(k) = self
            .setup_keys
            .values()
            .find(|k| k.auto_groups.iter().any(|g| g == id))
        {
            return Some(format!("setup key {}", k.name));
        }
        if let Some(r) = self
            .routers
            .values()
            .find(|r| r.peer_groups.iter().any(|g| g == id))
        {
            return Some(format!("router {}", r.id));
        }
        if let Some(acl) = self.acls.values().find(|a| {
            a.rules.iter().any(|r| {
                r.source_groups
                    .iter()
                    .chain(&r.destination_groups)
                    .any(|g| g == id)
            })
        }) {
            return Some(format!("acl {}", acl.name));
        }
        None
    }

    pub fn delete_group(&mut self, id: &str) -> Result<Touched> {
        let Some(g) = self.groups.get(id) else {
            return not_found("group", id);
        };
        if g.name == ALL_GROUP {
            return invalid("deleting group All is not allowed");
        }
        if let Some(user) = self.group_users(id) {
            // 400, as NetBird answers a group that is still linked.
            return Err(Error::BadRequest(format!("group {id} is used by {user}")));
        }
        if let Some(g) = self.groups.remove(id) {
            self.note(Record::new(Activity::GroupDeleted, id, name_meta(&g.name)));
        }
        Ok(self.bump(touched([(Kind::Group, id.to_string())])))
    }

    // ---- policies ----

    pub fn put_policy(&mut self, policy: Policy) -> Result<Touched> {
        check_name("policy", &policy.name)?;
        if policy.rules.is_empty() {
            return invalid("a policy needs at least one rule");
        }
        for (i, rule) in policy.rules.iter().enumerate() {
            let at = |field: &str| format!("rules[{i}].{field}");
            self.check_groups(&rule.sources, &at("sources"))?;
            self.check_groups(&rule.destinations, &at("destinations"))?;
            if let Some(r) = &rule.source_resource {
                self.check_resource_ref(r, &at("sourceResource"))?;
            }
            if let Some(r) = &rule.destination_resource {
                self.check_resource_ref(r, &at("destinationResource"))?;
            }
            if rule.sources.is_empty() && rule.source_resource.is_none() {
                return invalid(format!(
                    "{}: a rule needs sources or a sourceResource",
                    at("sources")
                ));
            }
            if rule.destinations.is_empty() && rule.destination_resource.is_none() {
                return invalid(format!(
                    "{}: a rule needs destinations or a destinationResource",
                    at("destinations")
                ));
            }
            if !rule.protocol.has_ports()
                && (!rule.ports.is_empty() || !rule.port_ranges.is_empty())
            {
                return invalid(format!("{}: ports apply only to tcp and udp", at("ports")));
            }
            if let Some(p) = rule.ports.iter().find(|p| **p == 0) {
                return invalid(format!("{}: port {p} is out of range 1-65535", at("ports")));
            }
            if let Some(r) = rule
                .port_ranges
                .iter()
                .find(|r| r.start == 0 || r.start > r.end)
            {
                return invalid(format!(
                    "{}: range {}-{} is not within 1-65535 with start <= end",
                    at("port_ranges"),
                    r.start,
                    r.end
                ));
            }
        }
        let id = policy.id.clone();
        let activity = if self.policies.contains_key(&id) {
            Activity::PolicyUpdated
        } else {
            Activity::PolicyAdded
        };
        self.note(Record::new(activity, &id, name_meta(&policy.name)));
        self.policies.insert(id.clone(), policy);
        Ok(self.bump(touched([(Kind::Policy, id)])))
    }

    pub fn delete_policy(&mut self, id: &str) -> Result<Touched> {
        let Some(policy) = self.policies.remove(id) else {
            return not_found("policy", id);
        };
        self.note(Record::new(
            Activity::PolicyRemoved,
            id,
            name_meta(&policy.name),
        ));
        Ok(self.bump(touched([(Kind::Policy, id.to_string())])))
    }

    // ---- networks ----

    pub fn put_network(&mut self, network: Network) -> Result<Touched> {
        check_name("network", &network.name)?;
        let id = network.id.clone();
        let activity = if self.networks.contains_key(&id) {
            Activity::NetworkUpdated
        } else {
            Activity::NetworkCreated
        };
        self.note(Record::new(activity, &id, name_meta(&network.name)));
        self.networks.insert(id.clone(), network);
        Ok(self.bump(touched([(Kind::Network, id)])))
    }

    /// Deletes a network with its resources and routers.
    pub fn delete_network(&mut self, id: &str) -> Result<Touched> {
        let Some(network) = self.networks.remove(id) else {
            return not_found("network", id);
        };
        self.note(Record::new(
            Activity::NetworkDeleted,
            id,
            name_meta(&network.name),
        ));
        let mut t = touched([(Kind::Network, id.to_string())]);
        let resources: Vec<String> = self
            .resources
            .values()
            .filter(|r| r.network_id == id)
            .map(|r| r.id.clone())
            .collect();
        for rid in resources {
            t.extend(self.remove_resource(&rid));
        }
        let routers: Vec<String> = self
            .routers
            .values()
            .filter(|r| r.network_id == id)
            .map(|r| r.id.clone())
            .collect();
        for rid in routers {
            self.routers.remove(&rid);
            t.insert((Kind::Router, rid));
        }
        Ok(self.bump(t))
    }

    /// Adds or replaces a resource and sets the groups it belongs to.
    pub fn put_resource(
        &mut self,
        resource: NetworkResource,
        groups: &[String],
    ) -> Result<Touched> {
        check_name("resource", &resource.name)?;
        if !self.networks.contains_key(&resource.network_id) {
            return not_found("network", &resource.network_id);
        }
        self.check_groups(groups, "groups")?;
        let id = resource.id.clone();
        let kind = resource.kind();
        let activity = if self.resources.contains_key(&id) {
            Activity::NetworkResourceUpdated
        } else {
            Activity::NetworkResourceCreated
        };
        self.note(Record::new(
            activity,
            &id,
            [
                ("name", resource.name.clone()),
                ("network_id", resource.network_id.clone()),
            ],
        ));
        self.resources.insert(id.clone(), resource);
        let mut t = touched([(Kind::Resource, id.clone())]);
        for g in self.groups.values_mut() {
            let member = g.resources.iter().position(|r| r.id == id);
            let wanted = groups.contains(&g.id);
            match (member, wanted) {
                (None, true) => g.resources.push(ResourceRef {
                    id: id.clone(),
                    kind,
                }),
                (Some(i), false) => {
                    g.resources.remove(i);
                }
                (Some(i), true) => g.resources[i].kind = kind,
                (None, false) => continue,
            }
            t.insert((Kind::Group, g.id.clone()));
        }
        Ok(self.bump(t))
    }

    fn remove_resource(&mut self, id: &str) -> Touched {
        let mut t = touched([(Kind::Resource, id.to_string())]);
        self.resources.remove(id);
        for g in self.groups.values_mut() {
            if let Some(i) = g.resources.iter().position(|r| r.id == id) {
                g.resources.remove(i);
                t.insert((Kind::Group, g.id.clone()));
            }
        }
        for policy in self.policies.values_mut() {
            for rule in &mut policy.rules {
                for end in [&mut rule.source_resource, &mut rule.destination_resource] {
                    if end.as_ref().is_some_and(|r| r.id == id) {
                        *end = None;
                        t.insert((Kind::Policy, policy.id.clone()));
                    }
                }
            }
        }
        t
    }

    pub fn delete_resource(&mut self, network_id: &str, id: &str) -> Result<Touched> {
        let Some(resource) = self
            .resources
            .get(id)
            .filter(|r| r.network_id == network_id)
        else {
            return not_found("resource", id);
        };
        let record = Record::new(
            Activity::NetworkResourceDeleted,
            id,
            [
                ("name", resource.name.clone()),
                ("network_id", network_id.to_string()),
            ],
        );
        self.note(record);
        let t = self.remove_resource(id);
        Ok(self.bump(t))
    }

    pub fn put_router(&mut self, router: NetworkRouter) -> Result<Touched> {
        if !self.networks.contains_key(&router.network_id) {
            return not_found("network", &router.network_id);
        }
        match (&router.peer, router.peer_groups.is_empty()) {
            (Some(_), false) => {
                return invalid("a router names either peer or peer_groups, not both");
            }
            (None, true) => return invalid("a router needs a peer or peer_groups"),
            (Some(p), true) => self.check_peers(std::slice::from_ref(p), "peer")?,
            (None, false) => self.check_groups(&router.peer_groups, "peer_groups")?,
        }
        let id = router.id.clone();
        let activity = if self.routers.contains_key(&id) {
            Activity::NetworkRouterUpdated
        } else {
            Activity::NetworkRouterCreated
        };
        self.note(Record::new(
            activity,
            &id,
            [("network_id", router.network_id.clone())],
        ));
        self.routers.insert(id.clone(), router);
        Ok(self.bump(touched([(Kind::Router, id)])))
    }

    pub fn delete_router(&mut self, network_id: &str, id: &str) -> Result<Touched> {
        if self
            .routers
            .get(id)
            .is_none_or(|r| r.network_id != network_id)
        {
            return not_found("router", id);
        }
        self.routers.remove(id);
        self.note(Record::new(
            Activity::NetworkRouterDeleted,
            id,
            [("network_id", network_id.to_string())],
        ));
        Ok(self.bump(touched([(Kind::Router, id.to_string())])))
    }

    /// Ephemeral peers that have been offline for at least `after` seconds.
    pub fn expired_ephemeral_peers(
        &self,
        now: UnixTime,
        after: u64,
        connected: &dyn Fn(&str) -> bool,
    ) -> Vec<String> {
        self.peers
            .values()
            .filter(|p| {
                p.ephemeral && !connected(&p.id) && now.saturating_sub(p.last_seen) >= after
            })
            .map(|p| p.id.clone())
            .collect()
    }
}

/// Parses a resource address: an IP (a host), a CIDR (a subnet; host bits must be zero), a domain
/// or a `*.domain` wildcard.
pub fn parse_resource_address(text: &str) -> Result<ResourceAddress> {
    let t = text.trim();
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(ResourceAddress::Prefix(IpNet::from(ip)));
    }
    if t.contains('/') {
        let net: IpNet = t.parse().map_err(|_| {
            Error::Invalid(format!("address {t:?} is not a valid IP, CIDR or domain"))
        })?;
        if net.trunc() != net {
            return invalid(format!(
                "address {t:?} has host bits set; did you mean {}?",
                net.trunc()
            ));
        }
        return Ok(ResourceAddress::Prefix(net));
    }
    let name = t.strip_prefix("*.").unwrap_or(t);
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if name.len() > 253
        || !name.contains('.')
        || !name.split('.').all(valid_label)
        || name
            .split('.')
            .next_back()
            .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
    {
        return invalid(format!("address {t:?} is not a valid IP, CIDR or domain"));
    }
    Ok(ResourceAddress::Domain(t.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests;
