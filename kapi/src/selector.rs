//! Label and field selectors, parsed and matched as kube-apiserver does.
//!
//! Label selectors: comma-separated requirements, all of which must hold:
//! `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k` (exists), `!k` (does not exist).
//! `!=` and `notin` also match objects without the label. Field selectors: `f=v`, `f==v`, `f!=v`
//! over the fields a resource supports.

use crate::status::Status;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value` / `key==value` / `key in (values)`
    In(String, Vec<String>),
    /// `key!=value` / `key notin (values)`
    NotIn(String, Vec<String>),
    /// `key`
    Exists(String),
    /// `!key`
    DoesNotExist(String),
}

/// A parsed label selector. The empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector(pub Vec<Requirement>);

fn bad(selector: &str, why: impl std::fmt::Display) -> Status {
    Status::bad_request(format!(
        "unable to parse requirement: {why} (in selector {selector:?})"
    ))
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters of `[A-Za-z0-9_.-]`, starting and ending alphanumeric.
fn valid_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        if p.is_empty()
            || p.len() > 253
            || !p
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        {
            return false;
        }
    }
    valid_value(name) && !name.is_empty()
}

/// A label value: empty, or at most 63 characters of `[A-Za-z0-9_.-]`, alphanumeric at both ends.
fn valid_value(v: &str) -> bool {
    if v.is_empty() {
        return true;
    }
    let b = v.as_bytes();
    v.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Splits at top-level commas (not those inside parentheses).
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_set(selector: &str, s: &str) -> Result<Vec<String>, Status> {
    let inner = s
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| bad(selector, "found '', expected: '('"))?;
    let values: Vec<String> = inner.split(',').map(|v| v.trim().to_owned()).collect();
    for v in &values {
        if !valid_value(v) {
            return Err(bad(selector, format!("invalid label value: {v:?}")));
        }
    }
    Ok(values)
}

impl LabelSelector {
    /// Parses a selector string.
    pub fn parse(selector: &str) -> Result<LabelSelector, Status> {
        let mut reqs = Vec::new();
        if selector.trim().is_empty() {
            return Ok(LabelSelector(reqs));
        }
        for part in split_top(selector) {
            let part = part.trim();
            if part.is_empty() {
                return Err(bad(selector, "found ',', expected: identifier"));
            }
            let key_ok = |k: &str| {
                if valid_key(k) {
                    Ok(k.to_owned())
                } else {
                    Err(bad(selector, format!("invalid label key {k:?}")))
                }
            };
            let value_ok = |v: &str| {
                if valid_value(v) {
                    Ok(v.to_owned())
                } else {
                    Err(bad(selector, format!("invalid label value: {v:?}")))
                }
            };
            let req = if let Some(k) = part.strip_prefix('!') {
                Requirement::DoesNotExist(key_ok(k.trim())?)
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotIn(key_ok(k.trim())?, vec![value_ok(v.trim())?])
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::In(key_ok(k.trim())?, vec![value_ok(v.trim())?])
            } else if let Some((k, rest)) = split_word(part, "notin") {
                Requirement::NotIn(key_ok(k)?, parse_set(selector, rest)?)
            } else if let Some((k, rest)) = split_word(part, "in") {
                Requirement::In(key_ok(k)?, parse_set(selector, rest)?)
            } else {
                Requirement::Exists(key_ok(part)?)
            };
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether the labels (looked up by key) satisfy every requirement.
    pub fn matches<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::In(k, vs) => get(k).is_some_and(|v| vs.iter().any(|x| x == v)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|v| vs.iter().all(|x| x != v)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        })
    }

    /// Whether this selector matches everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `key <word> (set)`: splits at the operator word surrounded by whitespace.
fn split_word<'a>(part: &'a str, word: &str) -> Option<(&'a str, &'a str)> {
    let mut it = part.splitn(2, char::is_whitespace);
    let key = it.next()?;
    let rest = it.next()?.trim_start();
    let rest = rest.strip_prefix(word)?;
    if rest.starts_with(|c: char| c.is_whitespace() || c == '(') {
        Some((key, rest))
    } else {
        None
    }
}

/// One requirement of a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    /// The field path, e.g. `spec.nodeName`.
    pub field: String,
    /// `true` for `=`/`==`, `false` for `!=`.
    pub equals: bool,
    /// The value.
    pub value: String,
}

/// A parsed field selector. The empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector(pub Vec<FieldRequirement>);

impl FieldSelector {
    /// Parses `selector`, accepting only the fields in `supported`.
    pub fn parse(selector: &str, supported: &[&str]) -> Result<FieldSelector, Status> {
        let mut reqs = Vec::new();
        if selector.trim().is_empty() {
            return Ok(FieldSelector(reqs));
        }
        for part in selector.split(',') {
            let (field, equals, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, true, v)
            } else {
                return Err(Status::bad_request(format!(
                    "invalid selector: '{selector}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            if !supported.contains(&field) {
                let list: Vec<String> = supported.iter().map(|f| format!("{f:?}")).collect();
                return Err(Status::bad_request(format!(
                    "{field:?} is not a known field selector: only {}",
                    list.join(", ")
                )));
            }
            reqs.push(FieldRequirement {
                field: field.to_owned(),
                equals,
                value: value.trim().to_owned(),
            });
        }
        Ok(FieldSelector(reqs))
    }

    /// Whether the fields (looked up by path; absent fields count as "") satisfy every
    /// requirement.
    pub fn matches<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.0
            .iter()
            .all(|r| (get(&r.field).unwrap_or("") == r.value) == r.equals)
    }

    /// Whether this selector matches everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn labels(pairs: &[(&'static str, &'static str)]) -> HashMap<&'static str, &'static str> {
        pairs.iter().copied().collect()
    }

    fn m(sel: &str, l: &HashMap<&'static str, &'static str>) -> bool {
        LabelSelector::parse(sel)
            .unwrap()
            .matches(|k| l.get(k).copied())
    }

    #[test]
    fn every_operator() {
        let l = labels(&[("app", "web"), ("tier", "front"), ("example.com/team", "a")]);
        assert!(m("", &l));
        assert!(m("app=web", &l));
        assert!(m("app==web", &l));
        assert!(!m("app=db", &l));
        assert!(m("app!=db", &l));
        assert!(m("missing!=x", &l), "!= matches absent labels");
        assert!(!m("app!=web", &l));
        assert!(m("tier in (front, back)", &l));
        assert!(!m("tier in (back)", &l));
        assert!(m("tier notin (back)", &l));
        assert!(m("missing notin (back)", &l));
        assert!(m("app", &l));
        assert!(!m("!app", &l));
        assert!(m("!missing", &l));
        assert!(m("example.com/team=a,app=web,tier in (front)", &l));
        assert!(!m("app=web,tier=back", &l));
        assert!(m("app in (web),tier notin (x,y)", &l));
    }

    #[test]
    fn invalid_selectors_are_400() {
        for s in [
            "app=,",
            "a b c",
            "app in web",
            "app=we b",
            "-app=x",
            "app in (a,-b)",
            ",",
            "x/=y",
        ] {
            let err = LabelSelector::parse(s).expect_err(s);
            assert_eq!(err.code, 400, "{s}");
        }
    }

    #[test]
    fn field_selectors() {
        let sel = FieldSelector::parse(
            "spec.nodeName=n1,status.phase!=Failed",
            &["metadata.name", "spec.nodeName", "status.phase"],
        )
        .unwrap();
        let f = labels(&[("spec.nodeName", "n1"), ("status.phase", "Running")]);
        assert!(sel.matches(|k| f.get(k).copied()));
        let f = labels(&[("spec.nodeName", "n2")]);
        assert!(!sel.matches(|k| f.get(k).copied()));
        let err = FieldSelector::parse("spec.foo=x", &["metadata.name"]).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(
            err.message
                .contains("\"spec.foo\" is not a known field selector"),
            "{}",
            err.message
        );
        assert_eq!(
            FieldSelector::parse("nonsense", &["metadata.name"])
                .unwrap_err()
                .code,
            400
        );
    }
}
