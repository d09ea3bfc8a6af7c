//! `authenticate`: who is asking. Bearer tokens from a static file, like kube-apiserver's
//! `--token-auth-file`: one `token,user,uid,"group1,group2"` per line (`#` comments). The
//! metaserver replaces this source of truth later; the phase stays [`authenticate`].

use std::collections::HashMap;
use std::path::Path;

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// User name.
    pub name: String,
    /// User id.
    pub uid: String,
    /// Groups.
    pub groups: Vec<String>,
}

/// Tokens to users.
#[derive(Debug, Default)]
pub struct TokenAuth {
    tokens: HashMap<String, User>,
}

/// Why the token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read.
    #[error("reading token file {0}: {1}")]
    Read(String, std::io::Error),
    /// A line is malformed.
    #[error("token file line {line}: {why}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: &'static str,
    },
}

/// Splits one CSV line: commas outside double quotes separate fields.
fn fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(String::new()),
            c => out.last_mut().map(|f| f.push(c)).unwrap_or(()),
        }
    }
    out.into_iter().map(|f| f.trim().to_owned()).collect()
}

impl TokenAuth {
    /// Parses token file contents.
    pub fn parse(text: &str) -> Result<TokenAuth, AuthError> {
        let mut tokens = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f = fields(line);
            if f.len() < 3 || f[0].is_empty() || f[1].is_empty() {
                return Err(AuthError::Line {
                    line: i + 1,
                    why: "expected token,user,uid[,\"groups\"]",
                });
            }
            let groups = f
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            tokens.insert(
                f[0].clone(),
                User {
                    name: f[1].clone(),
                    uid: f[2].clone(),
                    groups,
                },
            );
        }
        Ok(TokenAuth { tokens })
    }

    /// Reads a token file.
    pub fn load(path: &Path) -> Result<TokenAuth, AuthError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AuthError::Read(path.display().to_string(), e))?;
        TokenAuth::parse(&text)
    }

    /// The user an `Authorization` header value authenticates, if any.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Option<&User> {
        let v = std::str::from_utf8(authorization?).ok()?;
        let (scheme, token) = v.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        self.tokens.get(token.trim())
    }
}

/// The authenticate phase: the user the request's bearer token names, or 401.
pub fn authenticate<'a>(
    auth: &'a TokenAuth,
    head: &crate::http::RequestHead,
) -> Result<&'a User, super::error::ProxyError> {
    auth.authenticate(head.header("authorization"))
        .ok_or(super::error::ProxyError::Unauthorized)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file() {
        let a = TokenAuth::parse("# comment\nt1,alice,1,\"devs,ops\"\nt2,bob,2\n").unwrap();
        let alice = a.authenticate(Some(b"Bearer t1")).unwrap();
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.groups, ["devs", "ops"]);
        assert_eq!(a.authenticate(Some(b"bearer t2")).unwrap().name, "bob");
        assert!(a.authenticate(Some(b"Bearer nope")).is_none());
        assert!(a.authenticate(Some(b"Basic t1")).is_none());
        assert!(a.authenticate(None).is_none());
        assert!(TokenAuth::parse("onlytoken\n").is_err());
    }
}
