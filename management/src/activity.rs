//! The activity log: who changed what, and when, shaped as NetBird's `/api/events`.
//!
//! Account changes note what they did as `Record`s (activity, target, details); the service
//! stamps each with who asked and stores it in the same transaction as the change, so the log
//! holds exactly the changes that took effect. Codes and messages are NetBird's, so tools that
//! read NetBird's events read ours.

use std::collections::BTreeMap;

/// What happened. ACLs (the seed's `/api/acls`) have no NetBird code of their own; they are
/// logged as rules (`rule.*`), NetBird's name for the access lists that preceded policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activity {
    PeerAddedByUser,
    PeerAddedWithSetupKey,
    PeerRemovedByUser,
    UserLoggedInPeer,
    PeerLoginExpired,
    PeerRenamed,
    PeerIpUpdated,
    PeerSshEnabled,
    PeerSshDisabled,
    PeerLoginExpirationEnabled,
    PeerLoginExpirationDisabled,
    PeerApproved,
    PeerApprovalRevoked,
    SetupKeyCreated,
    SetupKeyUpdated,
    SetupKeyRevoked,
    SetupKeyDeleted,
    GroupCreated,
    GroupUpdated,
    GroupDeleted,
    PolicyAdded,
    PolicyUpdated,
    PolicyRemoved,
    RuleAdded,
    RuleUpdated,
    RuleRemoved,
    NetworkCreated,
    NetworkUpdated,
    NetworkDeleted,
    NetworkResourceCreated,
    NetworkResourceUpdated,
    NetworkResourceDeleted,
    NetworkRouterCreated,
    NetworkRouterUpdated,
    NetworkRouterDeleted,
}

impl Activity {
    /// NetBird's (message, code) for the activity.
    pub fn describe(self) -> (&'static str, &'static str) {
        use Activity::*;
        match self {
            PeerAddedByUser => ("Peer added", "peer.user.add"),
            PeerAddedWithSetupKey => ("Peer added", "peer.setupkey.add"),
            PeerRemovedByUser => ("Peer deleted", "user.peer.delete"),
            UserLoggedInPeer => ("User logged in peer", "user.peer.login"),
            PeerLoginExpired => ("Peer login expired", "peer.login.expire"),
            PeerRenamed => ("Peer renamed", "peer.rename"),
            PeerIpUpdated => ("Peer IP updated", "peer.ip.update"),
            PeerSshEnabled => ("Peer SSH server enabled", "peer.ssh.enable"),
            PeerSshDisabled => ("Peer SSH server disabled", "peer.ssh.disable"),
            PeerLoginExpirationEnabled => (
                "Peer login expiration enabled",
                "peer.login.expiration.enable",
            ),
            PeerLoginExpirationDisabled => (
                "Peer login expiration disabled",
                "peer.login.expiration.disable",
            ),
            PeerApproved => ("Peer approved", "peer.approve"),
            PeerApprovalRevoked => ("Peer approval revoked", "peer.approval.revoke"),
            SetupKeyCreated => ("Setup key created", "setupkey.add"),
            SetupKeyUpdated => ("Setup key updated", "setupkey.update"),
            SetupKeyRevoked => ("Setup key revoked", "setupkey.revoke"),
            SetupKeyDeleted => ("Setup key deleted", "setupkey.delete"),
            GroupCreated => ("Group created", "group.add"),
            GroupUpdated => ("Group updated", "group.update"),
            GroupDeleted => ("Group deleted", "group.delete"),
            PolicyAdded => ("Policy added", "policy.add"),
            PolicyUpdated => ("Policy updated", "policy.update"),
            PolicyRemoved => ("Policy deleted", "policy.delete"),
            RuleAdded => ("Rule added", "rule.add"),
            RuleUpdated => ("Rule updated", "rule.update"),
            RuleRemoved => ("Rule deleted", "rule.delete"),
            NetworkCreated => ("Network created", "network.create"),
            NetworkUpdated => ("Network updated", "network.update"),
            NetworkDeleted => ("Network deleted", "network.delete"),
            NetworkResourceCreated => ("Network resource created", "network.resource.create"),
            NetworkResourceUpdated => ("Network resource updated", "network.resource.update"),
            NetworkResourceDeleted => ("Network resource deleted", "network.resource.delete"),
            NetworkRouterCreated => ("Network router created", "network.router.create"),
            NetworkRouterUpdated => ("Network router updated", "network.router.update"),
            NetworkRouterDeleted => ("Network router deleted", "network.router.delete"),
        }
    }
}

/// Who made a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Initiator {
    /// A REST request with the API token.
    Api,
    /// The service itself: expiries, ephemeral peers' cleanup. NetBird's `sys`.
    System,
    /// A peer's own Login.
    Peer { id: String, name: String },
    /// A registration with this setup key (NetBird names the key as the initiator).
    SetupKey { id: String, name: String },
}

impl Initiator {
    /// (initiator_id, initiator_name, initiator_email) as the API shows them.
    pub fn identity(&self) -> (String, String, String) {
        match self {
            Initiator::Api => ("api-token".into(), "API token".into(), String::new()),
            Initiator::System => ("sys".into(), "System".into(), String::new()),
            Initiator::Peer { id, name } | Initiator::SetupKey { id, name } => {
                (id.clone(), name.clone(), String::new())
            }
        }
    }
}

/// One thing a change did, before it is stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub activity: Activity,
    pub target_id: String,
    pub meta: BTreeMap<String, String>,
    /// `None`: whoever made the change (`Management::change`'s initiator).
    pub initiator: Option<Initiator>,
}

impl Record {
    pub fn new<'a>(
        activity: Activity,
        target_id: &str,
        meta: impl IntoIterator<Item = (&'a str, String)>,
    ) -> Record {
        Record {
            activity,
            target_id: target_id.to_string(),
            meta: meta.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            initiator: None,
        }
    }

    pub fn by(mut self, initiator: Initiator) -> Record {
        self.initiator = Some(initiator);
        self
    }
}

/// A stored event, as `/api/events` lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub id: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    pub activity: String,
    pub activity_code: String,
    pub initiator_id: String,
    pub initiator_name: String,
    pub initiator_email: String,
    pub target_id: String,
    pub meta: BTreeMap<String, String>,
}

/// Events kept: the oldest go once there are more. NetBird's API lists at most 10,000.
pub const KEPT_EVENTS: u64 = 100_000;
/// Events one `/api/events` answer lists, newest first.
pub const LISTED_EVENTS: usize = 10_000;
