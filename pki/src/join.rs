//! Join tokens: what an operator hands an agent (or a hub) so that it can enroll with the
//! metaserver once: `khJ.<id>.<secret>.<CA hash>`.
//!
//! * `id`: 8 lowercase letters or digits; the metaserver finds the token's record by it.
//! * `secret`: 16 lowercase letters or digits; the metaserver keeps only its SHA-256.
//! * `CA hash`: the 64 lowercase hex digits of the SHA-256 of the CA certificate's DER
//!   ([`crate::Ca::cert_hash`] without its `sha256:`). The joiner fetches the CA from the
//!   metaserver without verifying anything, then accepts it only if its hash is this one
//!   (kubeadm's `--discovery-token-ca-cert-hash`), and sends the secret only over TLS verified
//!   with that CA.
//!
//! The metaserver's side (records, expiry, single use) is `kubehub_meta::enroll`; the format
//! lives here because both the metaserver and the joiners need it.

/// The first field of every join token.
pub const PREFIX: &str = "khJ";
/// Length of the id.
pub const ID_LEN: usize = 8;
/// Length of the secret.
pub const SECRET_LEN: usize = 16;

/// Why a string is not a join token. The messages never contain the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinTokenError {
    /// It does not start with `khJ.`.
    #[error("not a KubeHub join token (one looks like khJ.<id>.<secret>.<CA hash>)")]
    NotAJoinToken,
    /// It starts like one but a part is wrong.
    #[error("malformed join token: {0}")]
    BadShape(String),
}

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// 8 lowercase letters or digits.
    pub id: String,
    /// 16 lowercase letters or digits.
    pub secret: String,
    /// 64 lowercase hex digits: SHA-256 of the CA certificate's DER.
    pub ca_hash: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("ca_hash", &self.ca_hash)
            .finish()
    }
}

fn lower_alnum(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// `sha256:<hex>` or `<hex>` → the 64 lowercase hex digits, or why not.
pub fn normalize_ca_hash(hash: &str) -> Result<String, JoinTokenError> {
    let hex = hash.strip_prefix("sha256:").unwrap_or(hash);
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(JoinTokenError::BadShape(format!(
            "the CA hash must be 64 hex digits (SHA-256), got {} characters",
            hex.len()
        )));
    }
    Ok(hex.to_ascii_lowercase())
}

impl JoinToken {
    /// Parses `khJ.<id>.<secret>.<CA hash>` (surrounding whitespace ignored; the hash in
    /// either case).
    pub fn parse(s: &str) -> Result<JoinToken, JoinTokenError> {
        let s = s.trim();
        let Some(rest) = s.strip_prefix(PREFIX).and_then(|r| r.strip_prefix('.')) else {
            return Err(JoinTokenError::NotAJoinToken);
        };
        let parts: Vec<&str> = rest.split('.').collect();
        let [id, secret, hash] = parts[..] else {
            return Err(JoinTokenError::BadShape(format!(
                "expected 4 dot-separated parts (khJ.<id>.<secret>.<CA hash>), found {}",
                parts.len() + 1
            )));
        };
        if id.len() != ID_LEN || !lower_alnum(id) {
            return Err(JoinTokenError::BadShape(format!(
                "the id must be {ID_LEN} lowercase letters or digits"
            )));
        }
        if secret.len() != SECRET_LEN || !lower_alnum(secret) {
            return Err(JoinTokenError::BadShape(format!(
                "the secret must be {SECRET_LEN} lowercase letters or digits"
            )));
        }
        Ok(JoinToken {
            id: id.to_owned(),
            secret: secret.to_owned(),
            ca_hash: normalize_ca_hash(hash)?,
        })
    }

    /// A new token with a random id and secret for the CA of hash `ca_hash` (`sha256:<hex>`
    /// or `<hex>`).
    pub fn generate(ca_hash: &str) -> Result<JoinToken, JoinTokenError> {
        Ok(JoinToken {
            id: random_alnum(ID_LEN),
            secret: random_alnum(SECRET_LEN),
            ca_hash: normalize_ca_hash(ca_hash)?,
        })
    }

    /// The token as text, secret included: give it to the joiner, never log it.
    pub fn encode(&self) -> String {
        format!("{PREFIX}.{}.{}.{}", self.id, self.secret, self.ca_hash)
    }

    /// The CA pin as [`crate::cert_hash`] spells hashes: `sha256:<hex>`.
    pub fn ca_pin(&self) -> String {
        format!("sha256:{}", self.ca_hash)
    }
}

/// `n` characters from `[a-z0-9]`, uniformly, from the thread's CSPRNG.
fn random_alnum(n: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn round_trip_and_shapes() {
        let t = JoinToken::generate(&format!("sha256:{HASH}")).unwrap();
        assert_eq!(t.id.len(), 8);
        assert_eq!(t.secret.len(), 16);
        let text = t.encode();
        assert!(text.starts_with("khJ."));
        assert_eq!(JoinToken::parse(&format!("  {text}\n")).unwrap(), t);
        assert_eq!(t.ca_pin(), format!("sha256:{HASH}"));
        assert!(
            !format!("{t:?}").contains(&t.secret),
            "Debug hides the secret"
        );
        let upper = format!("khJ.abcd1234.abcdefgh12345678.{}", HASH.to_uppercase());
        assert_eq!(JoinToken::parse(&upper).unwrap().ca_hash, HASH);
    }

    #[test]
    fn bad_tokens_say_why_without_the_secret() {
        assert_eq!(
            JoinToken::parse("eyJhbGciOi.x.y"),
            Err(JoinTokenError::NotAJoinToken)
        );
        assert_eq!(JoinToken::parse(""), Err(JoinTokenError::NotAJoinToken));
        for (bad, why) in [
            ("khJ.abcd1234.abcdefgh12345678", "4 dot-separated parts"),
            (&*format!("khJ.abcd123.abcdefgh12345678.{HASH}"), "id"),
            (&*format!("khJ.ABCD1234.abcdefgh12345678.{HASH}"), "id"),
            (&*format!("khJ.abcd1234.abcdefgh1234567.{HASH}"), "secret"),
            (&*format!("khJ.abcd1234.abcdefgh1234567_.{HASH}"), "secret"),
            ("khJ.abcd1234.abcdefgh12345678.0123", "64 hex"),
            (&*format!("khJ.abcd1234.abcdefgh12345678.{HASH}.x"), "parts"),
        ] {
            let e = JoinToken::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!e.contains("abcdefgh1234567"), "{e}");
        }
    }
}
