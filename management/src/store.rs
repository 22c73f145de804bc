//! SQLite persistence: one row per object (its JSON), plus the serial and the server's key.
//!
//! The account lives in memory for computing network maps; every change writes the objects it
//! touched, and the new serial, in one transaction, so a restart finds exactly the last
//! acknowledged state.

use std::path::Path;

use anyhow::{Context, Result};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    activity::{Event, KEPT_EVENTS},
    model::Account,
};

/// The tables' object kinds, and which of the account's maps each one is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Peer,
    Group,
    Policy,
    SetupKey,
    Network,
    Resource,
    Router,
    Acl,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Peer,
        Kind::Group,
        Kind::Policy,
        Kind::SetupKey,
        Kind::Network,
        Kind::Resource,
        Kind::Router,
        Kind::Acl,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Kind::Peer => "peer",
            Kind::Group => "group",
            Kind::Policy => "policy",
            Kind::SetupKey => "setup_key",
            Kind::Network => "network",
            Kind::Resource => "resource",
            Kind::Router => "router",
            Kind::Acl => "acl",
        }
    }
}

/// The objects one change touched: each is written as it now is, or deleted if it is gone.
pub type Touched = std::collections::BTreeSet<(Kind, String)>;

pub struct Store {
    db: Connection,
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS objects (kind TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (kind, id));
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp_ms INTEGER NOT NULL, activity TEXT NOT NULL,
        activity_code TEXT NOT NULL, initiator_id TEXT NOT NULL, initiator_name TEXT NOT NULL,
        initiator_email TEXT NOT NULL, target_id TEXT NOT NULL, meta TEXT NOT NULL);
";

fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).context("serialize")
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let db =
            Connection::open(path).with_context(|| format!("open database {}", path.display()))?;
        // WAL keeps readers and the writer apart; NORMAL sync is durable across process crashes.
        db.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
        db.execute_batch(SCHEMA).context("create tables")?;
        Ok(Store { db })
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .db
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.db.execute("INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value", params![key, value])?;
        Ok(())
    }

    fn load_kind<T: DeserializeOwned>(&self, kind: Kind) -> Result<Vec<(String, T)>> {
        let mut stmt = self
            .db
            .prepare("SELECT id, body FROM objects WHERE kind = ?1")?;
        let rows = stmt.query_map([kind.as_str()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, body) = row?;
            let value = serde_json::from_str(&body)
                .with_context(|| format!("stored {} {id} is not readable", kind.as_str()))?;
            out.push((id, value));
        }
        Ok(out)
    }

    pub fn load(&self) -> Result<Account> {
        Ok(Account {
            peers: self.load_kind(Kind::Peer)?.into_iter().collect(),
            groups: self.load_kind(Kind::Group)?.into_iter().collect(),
            policies: self.load_kind(Kind::Policy)?.into_iter().collect(),
            setup_keys: self.load_kind(Kind::SetupKey)?.into_iter().collect(),
            networks: self.load_kind(Kind::Network)?.into_iter().collect(),
            resources: self.load_kind(Kind::Resource)?.into_iter().collect(),
            routers: self.load_kind(Kind::Router)?.into_iter().collect(),
            acls: self.load_kind(Kind::Acl)?.into_iter().collect(),
            network_v6: self
                .meta("network_v6")?
                .filter(|s| !s.is_empty())
                .map(|s| s.parse())
                .transpose()
                .context("stored network_v6")?,
            serial: self
                .meta("serial")?
                .map(|s| s.parse())
                .transpose()
                .context("stored serial")?
                .unwrap_or(0),
            journal: Vec::new(),
        })
    }

    fn object_json(account: &Account, kind: Kind, id: &str) -> Result<Option<String>> {
        Ok(match kind {
            Kind::Peer => account.peers.get(id).map(to_json).transpose()?,
            Kind::Group => account.groups.get(id).map(to_json).transpose()?,
            Kind::Policy => account.policies.get(id).map(to_json).transpose()?,
            Kind::SetupKey => account.setup_keys.get(id).map(to_json).transpose()?,
            Kind::Network => account.networks.get(id).map(to_json).transpose()?,
            Kind::Resource => account.resources.get(id).map(to_json).transpose()?,
            Kind::Router => account.routers.get(id).map(to_json).transpose()?,
            Kind::Acl => account.acls.get(id).map(to_json).transpose()?,
        })
    }

    /// Writes the touched objects as the account now holds them, its serial and the change's
    /// events (their ids are assigned here), atomically.
    pub fn save(&mut self, account: &Account, touched: &Touched, events: &[Event]) -> Result<()> {
        let tx = self.db.transaction()?;
        for e in events {
            tx.execute(
                "INSERT INTO events (timestamp_ms, activity, activity_code, initiator_id, initiator_name, initiator_email, target_id, meta) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![e.timestamp_ms as i64, e.activity, e.activity_code, e.initiator_id, e.initiator_name, e.initiator_email, e.target_id, to_json(&e.meta)?],
            )?;
        }
        if !events.is_empty() {
            tx.execute(
                "DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?1",
                [KEPT_EVENTS as i64],
            )?;
        }
        for (kind, id) in touched {
            match Self::object_json(account, *kind, id)? {
                Some(body) => tx.execute(
                    "INSERT INTO objects (kind, id, body) VALUES (?1, ?2, ?3) ON CONFLICT(kind, id) DO UPDATE SET body = excluded.body",
                    params![kind.as_str(), id, body],
                )?,
                None => tx.execute("DELETE FROM objects WHERE kind = ?1 AND id = ?2", params![kind.as_str(), id])?,
            };
        }
        tx.execute("INSERT INTO meta (key, value) VALUES ('serial', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value", [account.serial.to_string()])?;
        let v6 = account
            .network_v6
            .map(|n| n.to_string())
            .unwrap_or_default();
        tx.execute("INSERT INTO meta (key, value) VALUES ('network_v6', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value", [v6])?;
        tx.commit().context("commit")?;
        Ok(())
    }
}

impl Store {
    /// The newest `limit` events, newest first.
    pub fn events(&self, limit: usize) -> Result<Vec<Event>> {
        let mut stmt = self.db.prepare(
            "SELECT id, timestamp_ms, activity, activity_code, initiator_id, initiator_name, initiator_email, target_id, meta FROM events ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            Ok((
                Event {
                    id: r.get::<_, i64>(0)? as u64,
                    timestamp_ms: r.get::<_, i64>(1)? as u64,
                    activity: r.get(2)?,
                    activity_code: r.get(3)?,
                    initiator_id: r.get(4)?,
                    initiator_name: r.get(5)?,
                    initiator_email: r.get(6)?,
                    target_id: r.get(7)?,
                    meta: Default::default(),
                },
                r.get::<_, String>(8)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (mut event, meta) = row?;
            event.meta = serde_json::from_str(&meta)
                .with_context(|| format!("stored event {} is not readable", event.id))?;
            out.push(event);
        }
        Ok(out)
    }
}
