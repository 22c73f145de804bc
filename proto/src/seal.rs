//! WireGuard keys and the NaCl box NetBird seals message bodies with.
//!
//! A body is `nonce (24 bytes) ‖ box(message)`, where box is crypto_box (X25519, XSalsa20,
//! Poly1305) keyed by the sender's WireGuard private key and the receiver's WireGuard public key.
//! There is no counter and no replay window: the nonce is random per message.

use std::fmt;

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use crypto_box::{
    PublicKey, SalsaBox, SecretKey,
    aead::{Aead, generic_array::GenericArray},
};
use rand_core::{OsRng, RngCore};

use crate::pb::EncryptedMessage;

pub const NONCE_LEN: usize = 24;
/// Poly1305 tag that the box puts in front of the ciphertext.
pub const TAG_LEN: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error(
        "a WireGuard key is 32 bytes in base64 (44 characters); got {0} characters that are not one"
    )]
    Malformed(usize),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("sealed body is {0} bytes, shorter than nonce and tag ({min})", min = NONCE_LEN + TAG_LEN)]
    TooShort(usize),
    #[error("sealed body does not open with these keys (wrong key or tampered message)")]
    BadSeal,
    #[error("sender key in the message: {0}")]
    SenderKey(KeyError),
    #[error("opened body is not a valid {kind} message: {error}")]
    Decode {
        kind: &'static str,
        error: prost::DecodeError,
    },
}

/// A WireGuard (X25519) private key.
#[derive(Clone)]
pub struct WgKey(SecretKey);

/// A WireGuard (X25519) public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WgPublicKey([u8; 32]);

fn decode_key(text: &str) -> Result<[u8; 32], KeyError> {
    let bytes = B64
        .decode(text.trim())
        .map_err(|_| KeyError::Malformed(text.len()))?;
    bytes
        .try_into()
        .map_err(|_| KeyError::Malformed(text.len()))
}

impl WgKey {
    /// A new random key, clamped as `wg genkey` clamps it.
    pub fn generate() -> WgKey {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        WgKey::from_bytes(bytes)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> WgKey {
        WgKey(SecretKey::from(bytes))
    }

    /// Parses the base64 form `wg genkey` prints.
    pub fn from_base64(text: &str) -> Result<WgKey, KeyError> {
        decode_key(text).map(WgKey::from_bytes)
    }

    pub fn to_base64(&self) -> String {
        B64.encode(self.0.to_bytes())
    }

    pub fn public(&self) -> WgPublicKey {
        WgPublicKey(*self.0.public_key().as_bytes())
    }

    fn salsa_box(&self, peer: &WgPublicKey) -> SalsaBox {
        SalsaBox::new(&PublicKey::from(peer.0), &self.0)
    }

    /// Seals `message` for `peer` under a fresh random nonce: `nonce ‖ box`.
    pub fn seal(&self, peer: &WgPublicKey, message: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        self.seal_with_nonce(peer, &nonce, message)
    }

    /// Seals under a given nonce; only for known-answer tests and `seal`.
    pub fn seal_with_nonce(
        &self,
        peer: &WgPublicKey,
        nonce: &[u8; NONCE_LEN],
        message: &[u8],
    ) -> Vec<u8> {
        let sealed = self
            .salsa_box(peer)
            .encrypt(GenericArray::from_slice(nonce), message)
            .expect("XSalsa20-Poly1305 encryption has no failure case for in-memory buffers");
        let mut body = Vec::with_capacity(NONCE_LEN + sealed.len());
        body.extend_from_slice(nonce);
        body.extend_from_slice(&sealed);
        body
    }

    /// Opens `nonce ‖ box` that `peer` sealed for this key.
    pub fn open(&self, peer: &WgPublicKey, body: &[u8]) -> Result<Vec<u8>, OpenError> {
        if body.len() < NONCE_LEN + TAG_LEN {
            return Err(OpenError::TooShort(body.len()));
        }
        let (nonce, sealed) = body.split_at(NONCE_LEN);
        self.salsa_box(peer)
            .decrypt(GenericArray::from_slice(nonce), sealed)
            .map_err(|_| OpenError::BadSeal)
    }

    /// Serializes and seals `message` into an `EncryptedMessage` from this key to `peer`.
    pub fn seal_message<M: prost::Message>(
        &self,
        peer: &WgPublicKey,
        message: &M,
    ) -> EncryptedMessage {
        EncryptedMessage {
            wg_pub_key: self.public().to_base64(),
            body: self.seal(peer, &message.encode_to_vec()),
            version: 0,
        }
    }

    /// Opens an `EncryptedMessage` sealed by `peer` and decodes its body as `M`.
    pub fn open_message<M: prost::Message + Default>(
        &self,
        peer: &WgPublicKey,
        message: &EncryptedMessage,
    ) -> Result<M, OpenError> {
        let plain = self.open(peer, &message.body)?;
        M::decode(plain.as_slice()).map_err(|error| OpenError::Decode {
            kind: std::any::type_name::<M>()
                .rsplit("::")
                .next()
                .unwrap_or("protobuf"),
            error,
        })
    }
}

impl fmt::Debug for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WgKey(public {})", self.public())
    }
}

impl WgPublicKey {
    pub fn from_bytes(bytes: [u8; 32]) -> WgPublicKey {
        WgPublicKey(bytes)
    }

    pub fn from_base64(text: &str) -> Result<WgPublicKey, KeyError> {
        decode_key(text).map(WgPublicKey)
    }

    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl EncryptedMessage {
    /// The sender's public key as the message names it.
    pub fn sender(&self) -> Result<WgPublicKey, OpenError> {
        WgPublicKey::from_base64(&self.wg_pub_key).map_err(OpenError::SenderKey)
    }
}

impl fmt::Display for WgPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for WgPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WgPublicKey({self})")
    }
}

impl std::str::FromStr for WgPublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WgPublicKey::from_base64(s)
    }
}

#[cfg(test)]
mod tests;
