//! Bearer tokens: `khT.<id>.<secret>`.
//!
//! * `khT.`: the prefix, so a KubeHub token is recognisable (in logs, by secret scanners).
//! * `<id>`: 12 lower-case letters and digits; names the token (`tokens/<id>`) for listing and
//!   revocation. Not secret.
//! * `<secret>`: 32 random bytes from the operating system, base64url without padding (43
//!   characters).
//!
//! Only the SHA-256 of the whole token string is stored ([`TokenRecord::hash`], lower-case
//! hex); the token itself is shown once, when issued. The secret has 256 bits of entropy, so a
//! plain (unsalted, fast) hash is enough: there is nothing to guess.
//!
//! [`TokenRecord::hash`]: crate::model::TokenRecord::hash

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};

/// What every token starts with.
pub const PREFIX: &str = "khT.";
/// The length of a token's id.
pub const ID_LEN: usize = 12;
/// The length of a token's secret (32 bytes, base64url without padding).
pub const SECRET_LEN: usize = 43;
/// The length of a whole token.
pub const TOKEN_LEN: usize = PREFIX.len() + ID_LEN + 1 + SECRET_LEN;

/// A token string read as a token (borrowed; parsing does not allocate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token<'a> {
    whole: &'a str,
}

/// Why a string is not a KubeHub token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// It does not start with `khT.`.
    #[error("not a KubeHub token (they start with khT.)")]
    Prefix,
    /// It has the prefix but not the length of one.
    #[error("not a KubeHub token: {0} characters long, tokens are {TOKEN_LEN}")]
    Length(usize),
    /// The id is not 12 lower-case letters and digits followed by `.`.
    #[error(
        "not a KubeHub token: the id after khT. must be 12 lower-case letters and digits, then '.'"
    )]
    Id,
    /// The secret is not base64url.
    #[error("not a KubeHub token: the secret must be 43 base64url characters")]
    Secret,
}

impl<'a> Token<'a> {
    /// Reads `khT.<id>.<secret>`, checking the shape only (never whether the token exists).
    pub fn parse(token: &'a str) -> Result<Token<'a>, TokenError> {
        Self::parse_bytes(token.as_bytes()).map(|_| Token { whole: token })
    }

    /// As [`Token::parse`], on bytes (an HTTP header value).
    pub fn parse_bytes(token: &'a [u8]) -> Result<Token<'a>, TokenError> {
        let Some(rest) = token.strip_prefix(PREFIX.as_bytes()) else {
            return Err(TokenError::Prefix);
        };
        if token.len() != TOKEN_LEN {
            return Err(TokenError::Length(token.len()));
        }
        let (id, rest) = rest.split_at(ID_LEN);
        if !id
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            || rest[0] != b'.'
        {
            return Err(TokenError::Id);
        }
        if !rest[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_'))
        {
            return Err(TokenError::Secret);
        }
        // Every byte checked is ASCII.
        match std::str::from_utf8(token) {
            Ok(whole) => Ok(Token { whole }),
            Err(_) => Err(TokenError::Secret),
        }
    }

    /// The whole token.
    pub fn as_str(&self) -> &'a str {
        self.whole
    }

    /// The token's id.
    pub fn id(&self) -> &'a str {
        &self.whole[PREFIX.len()..PREFIX.len() + ID_LEN]
    }

    /// The token's SHA-256, as stored (see [`hash`]).
    pub fn hash(&self) -> [u8; 32] {
        hash(self.whole.as_bytes())
    }

    /// Issues a new token: `(token, id, hash)`, the hash as lower-case hex. Store the id and
    /// hash in a [`TokenRecord`](crate::model::TokenRecord); show the token once.
    ///
    /// # Panics
    /// If the operating system's random number generator fails (nothing can be issued then).
    pub fn generate() -> (String, String, String) {
        let rng = SystemRandom::new();
        let mut secret = [0u8; 32];
        rng.fill(&mut secret)
            .expect("the operating system's random number generator failed");
        let id = random_id(&rng);
        let token = format!("{PREFIX}{id}.{}", URL_SAFE_NO_PAD.encode(secret));
        let hash = hex(&hash(token.as_bytes()));
        (token, id, hash)
    }
}

/// A new random id: 12 characters of `[a-z0-9]` (a token's id; a ban's).
///
/// # Panics
/// If the operating system's random number generator fails.
pub fn new_id() -> String {
    random_id(&SystemRandom::new())
}

/// 12 characters of `[a-z0-9]`, uniformly (bytes at or above 252 are drawn again).
fn random_id(rng: &SystemRandom) -> String {
    const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut id = String::with_capacity(ID_LEN);
    while id.len() < ID_LEN {
        let mut bytes = [0u8; 16];
        rng.fill(&mut bytes)
            .expect("the operating system's random number generator failed");
        for b in bytes {
            if b < 252 && id.len() < ID_LEN {
                id.push(char::from(ALPHABET[usize::from(b % 36)]));
            }
        }
    }
    id
}

/// SHA-256 of a token string (the whole of it, prefix included).
pub fn hash(token: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, token);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Lower-case hex.
pub fn hex(bytes: &[u8; 32]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Reads 64 lower-case hex digits (as [`hex`] writes them); `None` for anything else.
pub fn parse_hex(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_and_hash_as_recorded() {
        let (token, id, hash_hex) = Token::generate();
        assert_eq!(token.len(), TOKEN_LEN);
        let t = Token::parse(&token).expect("a generated token parses");
        assert_eq!(t.id(), id);
        assert!(crate::model::is_token_id(&id));
        assert_eq!(hex(&t.hash()), hash_hex);
        assert_eq!(parse_hex(&hash_hex), Some(t.hash()));
        // The secret is 32 bytes.
        let secret = &token[PREFIX.len() + ID_LEN + 1..];
        assert_eq!(URL_SAFE_NO_PAD.decode(secret).map(|s| s.len()), Ok(32));
        // Two tokens differ.
        let (other, other_id, _) = Token::generate();
        assert_ne!(token, other);
        assert_ne!(id, other_id);
    }

    #[test]
    fn hash_is_sha256_of_the_whole_string() {
        // sha256("abc"), FIPS 180-2.
        assert_eq!(
            hex(&hash(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn malformed_tokens_are_told_apart() {
        let good = format!("khT.abcdefghij01.{}", "A".repeat(43));
        assert!(Token::parse(&good).is_ok());
        assert_eq!(Token::parse("eyJhbGciOi"), Err(TokenError::Prefix));
        assert_eq!(Token::parse("KHT.abc"), Err(TokenError::Prefix));
        assert_eq!(Token::parse("khT.abc"), Err(TokenError::Length(7)));
        assert_eq!(
            Token::parse(&format!("khT.ABCDEFGHIJ01.{}", "A".repeat(43))),
            Err(TokenError::Id)
        );
        assert_eq!(
            Token::parse(&format!("khT.abcdefghij01-{}", "A".repeat(43))),
            Err(TokenError::Id)
        );
        assert_eq!(
            Token::parse(&format!("khT.abcdefghij01.{}=", "A".repeat(42))),
            Err(TokenError::Secret)
        );
        assert_eq!(
            Token::parse_bytes(format!("khT.abcdefghij01.{}\u{e9}", "A".repeat(41)).as_bytes()),
            Err(TokenError::Secret)
        );
    }

    #[test]
    fn hex_round_trips_and_refuses_upper_case() {
        let h = hash(b"x");
        assert_eq!(parse_hex(&hex(&h)), Some(h));
        assert_eq!(parse_hex(&hex(&h).to_uppercase()), None);
        assert_eq!(parse_hex("00"), None);
        assert_eq!(parse_hex(&"g".repeat(64)), None);
    }
}
