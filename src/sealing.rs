//! Secrets at rest (SPEC §1 `POSTBACK_SECRETS_KEY`): customers' signing
//! secrets, callback `auth` secrets and callback header values are stored
//! as AEAD ciphertext, never as the text a customer gave.
//!
//! A [`Keyring`] holds one or more 32-byte keys (a comma list): it seals
//! with the first and opens with whichever key a value names, so keys can
//! be rotated (add the new key first, run `postback secrets reencrypt`,
//! drop the old one). A sealed value is the text
//! `pbsealed:v1:<key id>:<base64 of nonce ‖ ciphertext>`, with
//! XChaCha20-Poly1305 and a random 192-bit nonce per value (no nonce
//! bookkeeping, no reuse across processes). The key id is the first 8 hex
//! digits of SHA-256 of the key: enough to pick a key, useless to guess
//! one. Values without the prefix are clear text (rows written before a key
//! was set) and are read as they are; they are sealed when rewritten.
//!
//! A leaf: it imports nothing of the crate. It must not log or put a
//! secret or a key into an error.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Prefix of a sealed value.
pub const SEALED_PREFIX: &str = "pbsealed:v1:";
const NONCE_LEN: usize = 24;
const KEY_LEN: usize = 32;

/// Why a keyring or a value was refused. Never carries key or secret text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// A key of `POSTBACK_SECRETS_KEY` is not base64 of 32 bytes.
    #[error("key {position} of the list is not base64 of 32 bytes")]
    BadKey {
        /// 1-based position in the comma list.
        position: usize,
    },
    /// The list has no key at all.
    #[error("the key list is empty")]
    NoKey,
    /// A stored value is sealed with a key this process does not have.
    #[error(
        "a stored secret is sealed with key {key_id}, which POSTBACK_SECRETS_KEY does not list"
    )]
    UnknownKey {
        /// The key id the value names.
        key_id: String,
    },
    /// A stored value names a key but does not decrypt with it.
    #[error("a stored secret does not decrypt with key {key_id} (corrupt or tampered)")]
    Corrupt {
        /// The key id the value names.
        key_id: String,
    },
}

struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
}

/// The keys of `POSTBACK_SECRETS_KEY`, or none (clear text, as before a key
/// was set). Cheap to share behind an `Arc`.
#[derive(Default)]
pub struct Keyring {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("Keyring").field("key_ids", &ids).finish()
    }
}

impl Keyring {
    /// No key: values are stored and read in clear.
    pub fn clear() -> Self {
        Keyring::default()
    }

    /// The keys of a comma list of base64 32-byte keys (empty entries are
    /// ignored; the list must hold at least one key).
    pub fn parse(list: &str) -> Result<Self, SealError> {
        let mut keys = Vec::new();
        for (i, entry) in list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let bad = || SealError::BadKey { position: i + 1 };
            let bytes = STANDARD.decode(entry).map_err(|_| bad())?;
            if bytes.len() != KEY_LEN {
                return Err(bad());
            }
            let id = hex8(&Sha256::digest(&bytes));
            let cipher = XChaCha20Poly1305::new_from_slice(&bytes).map_err(|_| bad())?;
            keys.push(Key { id, cipher });
        }
        if keys.is_empty() {
            return Err(SealError::NoKey);
        }
        Ok(Keyring { keys })
    }

    /// A fresh random key in the form `POSTBACK_SECRETS_KEY` takes.
    pub fn generate_key() -> String {
        let mut key = [0u8; KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut key);
        STANDARD.encode(key)
    }

    /// True when values are sealed (a key is set).
    pub fn is_sealing(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The id of the key new values are sealed with.
    pub fn current_key_id(&self) -> Option<&str> {
        self.keys.first().map(|k| k.id.as_str())
    }

    /// `value` as it is stored: sealed with the first key, or as it is when
    /// no key is set.
    pub fn seal(&self, value: &str) -> String {
        let Some(key) = self.keys.first() else {
            return value.to_owned();
        };
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let Ok(ciphertext) = key
            .cipher
            .encrypt(XNonce::from_slice(&nonce), value.as_bytes())
        else {
            // XChaCha20-Poly1305 only fails past 256 GiB of plaintext.
            unreachable!("sealing a secret cannot fail");
        };
        let mut blob = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ciphertext);
        format!("{SEALED_PREFIX}{}:{}", key.id, STANDARD.encode(blob))
    }

    /// The text of a stored value: opened with the key it names, or the
    /// value itself when it was stored in clear.
    pub fn open(&self, stored: &str) -> Result<String, SealError> {
        let Some(rest) = stored.strip_prefix(SEALED_PREFIX) else {
            return Ok(stored.to_owned());
        };
        let (key_id, encoded) = rest.split_once(':').unwrap_or((rest, ""));
        let corrupt = || SealError::Corrupt {
            key_id: key_id.to_owned(),
        };
        let key =
            self.keys
                .iter()
                .find(|k| k.id == key_id)
                .ok_or_else(|| SealError::UnknownKey {
                    key_id: key_id.to_owned(),
                })?;
        let blob = STANDARD.decode(encoded).map_err(|_| corrupt())?;
        if blob.len() < NONCE_LEN {
            return Err(corrupt());
        }
        let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
        let plain = key
            .cipher
            .decrypt(XNonce::from_slice(nonce), ciphertext)
            .map_err(|_| corrupt())?;
        String::from_utf8(plain).map_err(|_| corrupt())
    }

    /// True when `stored` must be rewritten to be sealed with the current
    /// key (clear text while a key is set, or another key's seal).
    pub fn needs_reseal(&self, stored: &str) -> bool {
        match self.current_key_id() {
            None => false,
            Some(id) => !stored
                .strip_prefix(SEALED_PREFIX)
                .is_some_and(|rest| rest.starts_with(id) && rest[id.len()..].starts_with(':')),
        }
    }
}

fn hex8(digest: &[u8]) -> String {
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> String {
        Keyring::generate_key()
    }

    #[test]
    fn sealed_values_open_and_never_show_their_text() {
        let ring = Keyring::parse(&key()).unwrap();
        let sealed = ring.seal("whsec_c2VjcmV0");
        assert!(sealed.starts_with(SEALED_PREFIX));
        assert!(!sealed.contains("c2VjcmV0") && !sealed.contains("secret"));
        assert_eq!(ring.open(&sealed).unwrap(), "whsec_c2VjcmV0");
        // A random nonce per value: the same text seals differently.
        assert_ne!(ring.seal("x"), ring.seal("x"));
        assert!(!ring.needs_reseal(&sealed));
    }

    #[test]
    fn clear_values_are_read_as_they_are_and_resealed_once_a_key_is_set() {
        let clear = Keyring::clear();
        assert_eq!(clear.seal("abc"), "abc");
        assert_eq!(clear.open("abc").unwrap(), "abc");
        assert!(!clear.needs_reseal("abc"));
        let ring = Keyring::parse(&key()).unwrap();
        assert_eq!(ring.open("abc").unwrap(), "abc");
        assert!(ring.needs_reseal("abc"));
    }

    #[test]
    fn a_list_seals_with_the_first_key_and_opens_with_any() {
        let (old, new) = (key(), key());
        let before = Keyring::parse(&old).unwrap();
        let sealed_old = before.seal("v");
        let both = Keyring::parse(&format!("{new}, {old},")).unwrap();
        assert_eq!(both.open(&sealed_old).unwrap(), "v");
        assert!(both.needs_reseal(&sealed_old));
        let sealed_new = both.seal("v");
        assert!(!both.needs_reseal(&sealed_new));
        assert_eq!(
            before.open(&sealed_new),
            Err::<String, _>(SealError::UnknownKey {
                key_id: both.current_key_id().unwrap().to_owned()
            })
        );
    }

    #[test]
    fn bad_keys_and_tampered_values_are_refused_without_their_text() {
        assert_eq!(Keyring::parse("").unwrap_err(), SealError::NoKey);
        assert_eq!(Keyring::parse(" , ").unwrap_err(), SealError::NoKey);
        assert_eq!(
            Keyring::parse("c2hvcnQ=").unwrap_err(),
            SealError::BadKey { position: 1 }
        );
        let err = Keyring::parse(&format!("{},not base64!", key())).unwrap_err();
        assert_eq!(err, SealError::BadKey { position: 2 });
        assert!(!err.to_string().contains("not base64!"));
        let ring = Keyring::parse(&key()).unwrap();
        let mut sealed = ring.seal("value");
        sealed.pop();
        sealed.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(matches!(ring.open(&sealed), Err(SealError::Corrupt { .. })));
    }
}
