//! Who may allocate, as coturn decides it: long-term credentials with static users
//! (`lt-cred-mech`, `user=name:password`) and time-limited credentials from a shared secret
//! (`use-auth-secret`: username = expiry unix time, optionally `time:user`; password =
//! base64(HMAC-SHA1(secret, username))), within one realm. Nonces carry their own expiry and a
//! MAC, so the server keeps no state for clients that never authenticate.

use std::{collections::HashMap, net::SocketAddr};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// How long a nonce is good for; after that a request gets 438 Stale Nonce and a new one.
pub const NONCE_LIFETIME_SECS: u64 = 600;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("unknown user")]
    UnknownUser,
    #[error("time-limited credential expired")]
    Expired,
    #[error("username is not a time-limited credential (expiry[:user])")]
    BadTimeUsername,
}

#[derive(Clone, Debug, Default)]
pub struct Credentials {
    pub realm: String,
    pub users: HashMap<String, String>,
    /// `static-auth-secret` of time-limited credentials.
    pub secret: Option<String>,
}

fn hmac_sha1(key: &[u8], data: &[u8]) -> [u8; 20] {
    let mut m: Hmac<Sha1> = Mac::new_from_slice(key).expect("HMAC takes keys of any size");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// The password of a time-limited credential (what NetBird's management hands its peers).
pub fn time_limited_password(secret: &str, username: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(hmac_sha1(secret.as_bytes(), username.as_bytes()))
}

impl Credentials {
    /// The password for `username` at unix time `now`: a static user's, or a time-limited one
    /// that has not expired.
    pub fn password(&self, username: &str, now: u64) -> Result<String, AuthError> {
        if let Some(p) = self.users.get(username) {
            return Ok(p.clone());
        }
        let Some(secret) = &self.secret else {
            return Err(AuthError::UnknownUser);
        };
        let expiry: u64 = username
            .split(':')
            .next()
            .and_then(|t| t.parse().ok())
            .ok_or(AuthError::BadTimeUsername)?;
        if expiry < now {
            return Err(AuthError::Expired);
        }
        Ok(time_limited_password(secret, username))
    }
}

/// Makes and checks nonces: `<expiry as 16 hex digits><first 8 bytes of HMAC(key, expiry,
/// client) as hex>`.
#[derive(Clone)]
pub struct Nonces {
    key: [u8; 32],
}

#[derive(Debug, PartialEq, Eq)]
pub enum NonceCheck {
    Valid,
    Stale,
    Invalid,
}

impl Nonces {
    pub fn new() -> Nonces {
        Nonces {
            key: rand::random(),
        }
    }

    fn mac(&self, expiry: u64, client: SocketAddr) -> String {
        let m = hmac_sha1(&self.key, format!("{expiry:016x}/{client}").as_bytes());
        m[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn issue(&self, client: SocketAddr, now: u64) -> String {
        let expiry = now + NONCE_LIFETIME_SECS;
        format!("{expiry:016x}{}", self.mac(expiry, client))
    }

    pub fn check(&self, nonce: &str, client: SocketAddr, now: u64) -> NonceCheck {
        if nonce.len() != 32 {
            return NonceCheck::Invalid;
        }
        let Ok(expiry) = u64::from_str_radix(&nonce[..16], 16) else {
            return NonceCheck::Invalid;
        };
        if nonce[16..] != self.mac(expiry, client) {
            return NonceCheck::Invalid;
        }
        if expiry < now {
            NonceCheck::Stale
        } else {
            NonceCheck::Valid
        }
    }
}

impl Default for Nonces {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_limited_credentials_as_coturn_and_netbird_make_them() {
        // HMAC-SHA1 known answer (RFC 2202 test case 2): key "Jefe".
        assert_eq!(
            hex(&hmac_sha1(b"Jefe", b"what do ya want for nothing?")),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
        let c = Credentials {
            realm: "r".into(),
            users: HashMap::new(),
            secret: Some("Jefe".into()),
        };
        assert_eq!(
            c.password("what do ya want for nothing?", 0),
            Err(AuthError::BadTimeUsername)
        );
        let p = c.password("2000000000:alice", 1_900_000_000).unwrap();
        assert_eq!(p, time_limited_password("Jefe", "2000000000:alice"));
        assert_eq!(
            c.password("2000000000", 2_000_000_001),
            Err(AuthError::Expired)
        );
        let s = Credentials {
            realm: "r".into(),
            users: [("bob".to_string(), "pw".to_string())].into(),
            secret: None,
        };
        assert_eq!(s.password("bob", 0).unwrap(), "pw");
        assert_eq!(s.password("eve", 0), Err(AuthError::UnknownUser));
    }

    #[test]
    fn nonces_expire_and_belong_to_their_client() {
        let n = Nonces::new();
        let a: SocketAddr = "198.18.0.2:4000".parse().unwrap();
        let nonce = n.issue(a, 1000);
        assert_eq!(n.check(&nonce, a, 1000), NonceCheck::Valid);
        assert_eq!(
            n.check(&nonce, a, 1000 + NONCE_LIFETIME_SECS + 1),
            NonceCheck::Stale
        );
        assert_eq!(
            n.check(&nonce, "198.18.0.3:4000".parse().unwrap(), 1000),
            NonceCheck::Invalid
        );
        assert_eq!(n.check("0000000000000000zzzz", a, 0), NonceCheck::Invalid);
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }
}
