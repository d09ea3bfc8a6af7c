//! What a request asks for, read as kube-apiserver reads it (`RequestInfo` in
//! `k8s.io/apiserver/pkg/endpoints/request`): the input of authorization (who may do *verb* on
//! *resource* in *namespace*) and of routing reads to the cache.
//!
//! ```text
//! GET    /api/v1/namespaces/ns/pods                  list pods in ns
//! GET    /api/v1/namespaces/ns/pods?watch=1          watch pods in ns
//! GET    /api/v1/watch/namespaces/ns/pods            watch (deprecated prefix)
//! GET    /api/v1/pods?fieldSelector=metadata.name=p  list, name p
//! DELETE /apis/apps/v1/namespaces/ns/deployments     deletecollection
//! POST   /api/v1/namespaces/ns/pods/p/exec           create pods/exec, name p
//! GET    /api/v1/namespaces/ns                       get namespaces, name ns, namespace ns
//! GET    /apis/apps/v1                               not a resource request: verb "get"
//! ```
//!
//! The rules, all kube-apiserver's:
//! * The path is split at `/` after trimming leading and trailing slashes; empty segments inside
//!   are kept (`/api/v1/namespaces//pods` has namespace `""`: all namespaces).
//! * Resource requests are `/api/{version}/{…}` and `/apis/{group}/{version}/{…}` with at least
//!   one segment after the version. Everything else (`/api`, `/apis/{group}/{version}`,
//!   `/version`, `/healthz`, `/openapi/v2` …) is a non-resource request whose verb is the
//!   lower-cased HTTP method.
//! * `watch/` or `proxy/` right after the version sets the verb (deprecated API); without it the
//!   method does: POST create, GET and HEAD get, PUT update, PATCH patch, DELETE delete, and
//!   anything else the empty verb ([`Verb::Unknown`]).
//! * `namespaces/{ns}/` is taken off and sets the namespace, except before `status` or
//!   `finalize`: `namespaces/{ns}` and `namespaces/{ns}/status` are the namespace object itself
//!   (resource `namespaces`, name `ns`, namespace `ns`).
//! * The rest is `{resource}/{name}/{subresource}/…` (no subresource for the `proxy/` verb).
//! * A get without a name is a list, or a watch when the first `watch` query value is anything
//!   but `false` (any case) or `0`; `metadata.name=x` in its `fieldSelector` sets the name (when
//!   the list options are valid and `x` is a valid path segment name). A delete without a name
//!   is a deletecollection.
//!
//! `path` is the *decoded* path (Go's `URL.Path`): see [`decode_path`].

use std::borrow::Cow;
use std::fmt;

use crate::path::Segments;
use crate::selector::LabelSelector;
use crate::status::Status;

/// The Kubernetes verb of a request, as authorization and audit name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Verb {
    /// `get`: one object (GET or HEAD with a name), or a subresource (`pods/log`, and `pods/exec`
    /// reached by a GET upgrade).
    Get,
    /// `list`: a GET without a name and without `watch`.
    List,
    /// `watch`: a GET without a name with `watch=true`/`1`, or any request under the deprecated
    /// `watch/` prefix.
    Watch,
    /// `create`: POST.
    Create,
    /// `update`: PUT.
    Update,
    /// `patch`: PATCH.
    Patch,
    /// `delete`: DELETE with a name.
    Delete,
    /// `deletecollection`: DELETE without a name.
    DeleteCollection,
    /// `proxy`: any request under the deprecated `proxy/` prefix.
    Proxy,
    /// kube-apiserver's empty verb: a resource request with a method that maps to none
    /// (OPTIONS, CONNECT, TRACE, a lower-case `get` …).
    Unknown,
    /// A non-resource request: the lower-cased HTTP method (`get`, `post`, …).
    NonResource(Cow<'static, str>),
}

impl Verb {
    /// The verb as kube-apiserver spells it (`""` for [`Verb::Unknown`]).
    pub fn as_str(&self) -> &str {
        match self {
            Verb::NonResource(method) => method,
            _ => self.as_static_str().unwrap_or_default(),
        }
    }

    /// [`Verb::as_str`] when it is a `&'static str`: every verb but a non-resource request
    /// with an unusual method (`None`), so a metric label can hold it without allocating.
    pub fn as_static_str(&self) -> Option<&'static str> {
        Some(match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
            Verb::Proxy => "proxy",
            Verb::Unknown => "",
            Verb::NonResource(Cow::Borrowed(method)) => method,
            Verb::NonResource(Cow::Owned(_)) => return None,
        })
    }

    /// kube-apiserver's verb for a resource request with this HTTP method (methods are
    /// case-sensitive: `get` is not `GET`).
    fn of_method(method: &str) -> Verb {
        match method {
            "POST" => Verb::Create,
            "GET" | "HEAD" => Verb::Get,
            "PUT" => Verb::Update,
            "PATCH" => Verb::Patch,
            "DELETE" => Verb::Delete,
            _ => Verb::Unknown,
        }
    }

    /// The verb of a non-resource request: the lower-cased method, without allocating for the
    /// usual ones. (Methods are ASCII tokens: Go's server refuses others.)
    fn non_resource(method: &str) -> Verb {
        const KNOWN: [&str; 9] = [
            "get", "head", "post", "put", "patch", "delete", "options", "connect", "trace",
        ];
        Verb::NonResource(
            match KNOWN.iter().find(|m| m.eq_ignore_ascii_case(method)) {
                Some(m) => Cow::Borrowed(m),
                None => Cow::Owned(method.to_ascii_lowercase()),
            },
        )
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request asks for: kube-apiserver's `RequestInfo`.
///
/// Fields borrow from the path and query given to [`request_info`]; only a name or selector that
/// had to be percent-decoded or unescaped from the query is owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo<'a> {
    /// Whether the request is for an API resource or subresource (false for discovery,
    /// `/version`, `/healthz`, `/openapi/…` and anything unknown).
    pub is_resource_request: bool,
    /// The (decoded) URL path.
    pub path: &'a str,
    /// The Kubernetes verb; for non-resource requests the lower-cased HTTP method.
    pub verb: Verb,
    /// `api` or `apis` (`""` for non-resource requests, except `/apis/{group}/{version}`, where
    /// kube-apiserver has already read the prefix when it finds too few segments).
    pub api_prefix: &'a str,
    /// The API group: `""` for the core group (and non-resource requests).
    pub api_group: &'a str,
    /// The API version.
    pub api_version: &'a str,
    /// The namespace: `""` for cluster-scoped requests and those across all namespaces. For the
    /// namespace object itself (`namespaces/{name}`) it is the object's name.
    pub namespace: &'a str,
    /// The plural resource name, e.g. `pods` (never the kind).
    pub resource: &'a str,
    /// The subresource, e.g. `status`, `log`, `exec`, `scale`, `proxy`.
    pub subresource: &'a str,
    /// The object's name from the path, or from a list's or watch's
    /// `fieldSelector=metadata.name=…`; `""` when none.
    pub name: Cow<'a, str>,
    /// The path from the resource on, `/`-separated: `{resource}/{name}/{subresource}/…`
    /// (kube-apiserver's `Parts`), e.g. `pods/web:8080/proxy/some/path`. `""` for non-resource
    /// requests.
    pub parts: &'a str,
    /// The first `fieldSelector` query value of a list, watch or deletecollection (not under the
    /// deprecated `watch/` prefix), for authorization by selector; `""` otherwise.
    pub field_selector: Cow<'a, str>,
    /// The first `labelSelector` query value, on the same requests as `field_selector`.
    pub label_selector: Cow<'a, str>,
}

impl<'a> RequestInfo<'a> {
    /// The path segments from the resource on (kube-apiserver's `Parts`); none for non-resource
    /// requests.
    pub fn parts(&self) -> impl Iterator<Item = &'a str> {
        let parts = self.parts;
        self.is_resource_request
            .then(|| parts.split('/'))
            .into_iter()
            .flatten()
    }

    /// Whether the request reaches a connect subresource (`exec`, `attach`, `portforward`,
    /// `proxy`) or the deprecated `proxy/` verb: a stream or an upgrade to pass through, never
    /// answered from a cache, whatever its verb (an `exec` by GET is a `get`).
    pub fn is_connect(&self) -> bool {
        self.is_resource_request
            && (self.verb == Verb::Proxy
                || matches!(
                    self.subresource,
                    "exec" | "attach" | "portforward" | "proxy"
                ))
    }

    /// Whether the verb is `get`, `list` or `watch` (only resource requests have these verbs).
    /// A read of a subresource (`log`, `status`, `scale`) or of a connect subresource (see
    /// [`RequestInfo::is_connect`]) is a read too.
    pub fn is_read(&self) -> bool {
        matches!(self.verb, Verb::Get | Verb::List | Verb::Watch)
    }
}

/// Why a request has no [`RequestInfo`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestInfoError {
    /// A deprecated `watch/` or `proxy/` prefix with nothing after it (`/api/v1/watch`).
    /// kube-apiserver answers 500.
    #[error("unable to determine kind and namespace from url, {url}")]
    NoResource {
        /// The path, with `?` and the query when there is one.
        url: String,
    },
    /// A `%` in the path not followed by two hex digits. Go's HTTP server answers 400.
    #[error("invalid URL escape {0:?}")]
    InvalidEscape(String),
    /// The decoded path is not UTF-8 (Go would take the bytes; a Rust `str` cannot).
    #[error("the decoded URL path is not UTF-8")]
    NotUtf8,
}

impl RequestInfoError {
    /// The error as kube-apiserver answers it: 500 for [`RequestInfoError::NoResource`] (its
    /// request-info filter fails), 400 for a path that does not decode.
    pub fn to_status(&self) -> Status {
        match self {
            RequestInfoError::NoResource { .. } => Status::internal(format!(
                "Internal error occurred: failed to create RequestInfo: {self}"
            )),
            _ => Status::bad_request(self.to_string()),
        }
    }
}

/// Reads a request: `method` as sent (case-sensitive), `path` decoded (see [`decode_path`]),
/// `query` raw (without the `?`). Never fails except for a deprecated `watch/` or `proxy/`
/// prefix with nothing after it, where kube-apiserver fails too; odd paths are non-resource
/// requests, as there.
pub fn request_info<'a>(
    method: &str,
    path: &'a str,
    query: &'a str,
) -> Result<RequestInfo<'a>, RequestInfoError> {
    let mut info = RequestInfo {
        is_resource_request: false,
        path,
        verb: Verb::non_resource(method),
        api_prefix: "",
        api_group: "",
        api_version: "",
        namespace: "",
        resource: "",
        subresource: "",
        name: Cow::Borrowed(""),
        parts: "",
        field_selector: Cow::Borrowed(""),
        label_selector: Cow::Borrowed(""),
    };
    let Some(segments) = Segments::of(path) else {
        return Ok(info);
    };
    if segments.len() < 3 {
        return Ok(info);
    }
    let Some(root) = segments.api_root() else {
        return Ok(info);
    };
    info.api_prefix = root.prefix;
    let Some(rest) = root.rest else {
        // `/apis/{group}/{version}`: kube-apiserver has taken the prefix by now.
        return Ok(info);
    };
    info.is_resource_request = true;
    info.api_group = root.group;
    info.api_version = root.version;

    let (rest, verb_in_path) = match rest.split_first() {
        ("watch" | "proxy", None) => {
            return Err(RequestInfoError::NoResource {
                url: if query.is_empty() {
                    path.to_owned()
                } else {
                    format!("{path}?{query}")
                },
            })
        }
        ("watch", Some(after)) => {
            info.verb = Verb::Watch;
            (after, true)
        }
        ("proxy", Some(after)) => {
            info.verb = Verb::Proxy;
            (after, true)
        }
        _ => {
            info.verb = Verb::of_method(method);
            (rest, false)
        }
    };

    let scope = rest.scope();
    info.namespace = scope.namespace;
    let parts = scope.parts;
    info.parts = parts.as_str();
    info.resource = parts.first();
    info.name = Cow::Borrowed(parts.get(1).unwrap_or(""));
    if info.verb != Verb::Proxy {
        info.subresource = parts.get(2).unwrap_or("");
    }

    let mut list_query = None;
    if info.name.is_empty() && info.verb == Verb::Get {
        let q = ListQuery::scan(query);
        let (watch, name) = q.watch_and_name();
        info.verb = if watch { Verb::Watch } else { Verb::List };
        if let Some(name) = name {
            info.name = name;
        }
        list_query = Some(q);
    }
    if info.name.is_empty() && info.verb == Verb::Delete {
        info.verb = Verb::DeleteCollection;
    }
    if !verb_in_path && matches!(info.verb, Verb::List | Verb::Watch | Verb::DeleteCollection) {
        let q = list_query.unwrap_or_else(|| ListQuery::scan(query));
        info.field_selector = q.field_selector.and_then(utf8).unwrap_or_default();
        info.label_selector = q.label_selector.and_then(utf8).unwrap_or_default();
    }
    Ok(info)
}

/// Decodes a raw request path as Go's `URL.Path` is decoded: `%XX` becomes the byte, `+` stays.
/// Borrows when there is nothing to decode.
///
/// kube-apiserver reads the decoded path, so `/api/v1/namespaces/a%2Fb/pods` is namespace `a`,
/// resource `b`, name `pods`: authorize what the server will read, not what the client wrote.
pub fn decode_path(raw: &str) -> Result<Cow<'_, str>, RequestInfoError> {
    match percent_decode(raw.as_bytes(), false) {
        Err(at) => {
            let bad = &raw.as_bytes()[at..];
            Err(RequestInfoError::InvalidEscape(
                String::from_utf8_lossy(&bad[..bad.len().min(3)]).into_owned(),
            ))
        }
        Ok(Cow::Borrowed(_)) => Ok(Cow::Borrowed(raw)),
        Ok(Cow::Owned(bytes)) => String::from_utf8(bytes)
            .map(Cow::Owned)
            .map_err(|_| RequestInfoError::NotUtf8),
    }
}

/// Go's `url.PathUnescape` (`plus: false`) and `url.QueryUnescape` (`plus: true`, `+` is a
/// space): every `%` must start two hex digits (`Err` has the offset of the first that does not).
fn percent_decode(s: &[u8], plus: bool) -> Result<Cow<'_, [u8]>, usize> {
    let mut escapes = 0;
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            match (s.get(i + 1), s.get(i + 2)) {
                (Some(h), Some(l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                    escapes += 1;
                    i += 3;
                }
                _ => return Err(i),
            }
        } else {
            i += 1;
        }
    }
    if escapes == 0 && !(plus && s.contains(&b'+')) {
        return Ok(Cow::Borrowed(s));
    }
    let hex = |b: u8| match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    };
    let mut out = Vec::with_capacity(s.len() - 2 * escapes);
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        match b {
            b'%' => {
                let (h, l) = (s.get(i + 1).copied(), s.get(i + 2).copied());
                out.push(hex(h.unwrap_or(b'0')) << 4 | hex(l.unwrap_or(b'0')));
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(Cow::Owned(out))
}

fn utf8(bytes: Cow<'_, [u8]>) -> Option<Cow<'_, str>> {
    match bytes {
        Cow::Borrowed(b) => std::str::from_utf8(b).ok().map(Cow::Borrowed),
        Cow::Owned(v) => String::from_utf8(v).ok().map(Cow::Owned),
    }
}

/// The query values that decide a list's verb and name: the first value of each key, read as
/// Go's `url.ParseQuery` reads a query (pairs split at `&`; a pair holding `;` or a bad `%`
/// escape is dropped; `+` is a space).
#[derive(Debug, Default)]
struct ListQuery<'a> {
    watch: Option<Cow<'a, [u8]>>,
    field_selector: Option<Cow<'a, [u8]>>,
    label_selector: Option<Cow<'a, [u8]>>,
    limit: Option<Cow<'a, [u8]>>,
    timeout_seconds: Option<Cow<'a, [u8]>>,
}

impl<'a> ListQuery<'a> {
    fn scan(query: &'a str) -> ListQuery<'a> {
        let mut q = ListQuery::default();
        for pair in query.split('&') {
            if pair.is_empty() || pair.contains(';') {
                continue;
            }
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let Ok(key) = percent_decode(key.as_bytes(), true) else {
                continue;
            };
            let slot = match &*key {
                b"watch" => &mut q.watch,
                b"fieldSelector" => &mut q.field_selector,
                b"labelSelector" => &mut q.label_selector,
                b"limit" => &mut q.limit,
                b"timeoutSeconds" => &mut q.timeout_seconds,
                _ => continue,
            };
            if slot.is_some() {
                continue;
            }
            if let Ok(value) = percent_decode(value.as_bytes(), true) {
                *slot = Some(value);
            }
        }
        q
    }

    /// Whether a list is a watch, and the name its field selector requires, as kube-apiserver
    /// decides them: it decodes the query into `ListOptions`; if that fails it takes no name and
    /// reads `watch` on its own, with `strings.ToLower` instead of `strings.EqualFold` (which
    /// differ only for `falſe`, with the long s that case-folds to `s`).
    fn watch_and_name(&self) -> (bool, Option<Cow<'a, str>>) {
        let field = match &self.field_selector {
            None => Ok(None),
            Some(Cow::Borrowed(b)) => required_name(b),
            Some(Cow::Owned(v)) => required_name(v).map(|n| n.map(|n| Cow::Owned(n.into_owned()))),
        };
        let field_ok = field.is_ok();
        let decodes = || {
            field_ok
                && [&self.limit, &self.timeout_seconds]
                    .into_iter()
                    .flatten()
                    .all(|v| std::str::from_utf8(v).is_ok_and(|v| v.parse::<i64>().is_ok()))
                && self.label_selector.as_ref().is_none_or(|v| {
                    std::str::from_utf8(v).is_ok_and(|v| LabelSelector::parse(v).is_ok())
                })
        };
        let watch = match self.watch.as_deref() {
            None => false,
            Some(v) if v == b"0" || v.eq_ignore_ascii_case(b"false") => false,
            Some(v) if folds_to_false(v) => !decodes(),
            Some(_) => true,
        };
        let name = match field {
            Ok(Some(name)) if valid_path_segment_name(&name) && decodes() => utf8(name),
            _ => None,
        };
        (watch, name)
    }
}

/// Go's `strings.EqualFold(v, "false")` for a `v` that is not ASCII: `ſ` (U+017F) folds to `s`.
fn folds_to_false(v: &[u8]) -> bool {
    std::str::from_utf8(v).is_ok_and(|v| {
        let mut c = v.chars();
        [
            c.next().is_some_and(|c| c.eq_ignore_ascii_case(&'f')),
            c.next().is_some_and(|c| c.eq_ignore_ascii_case(&'a')),
            c.next().is_some_and(|c| c.eq_ignore_ascii_case(&'l')),
            c.next()
                .is_some_and(|c| c.eq_ignore_ascii_case(&'s') || c == 'ſ'),
            c.next().is_some_and(|c| c.eq_ignore_ascii_case(&'e')),
            c.next().is_none(),
        ]
        .iter()
        .all(|&ok| ok)
    })
}

/// kube-apiserver's `IsPathSegmentName`: not `.` or `..`, no `/` or `%`.
fn valid_path_segment_name(name: &[u8]) -> bool {
    name != b"." && name != b".." && !name.iter().any(|&b| b == b'/' || b == b'%')
}

/// Parses a field selector as kube-apiserver's `fields.ParseSelector` does and returns what
/// `RequiresExactMatch("metadata.name")` would: the value of the first `metadata.name=` (or
/// `==`) term in sorted term order. `Err` if any term fails to parse.
///
/// Terms are split at commas not escaped by `\`; each splits at its first `!=`, `==` or `=`
/// (checked in that order at each position); a value may escape `\`, `,` and `=` with `\` and
/// may hold no other `\`, `,` or `=`. Field names are not trimmed or checked.
fn required_name(selector: &[u8]) -> Result<Option<Cow<'_, [u8]>>, ()> {
    // The smallest term (Go sorts the terms) with its value.
    let mut best: Option<(&[u8], &[u8])> = None;
    let mut escaped = false;
    let mut start = 0;
    for i in 0..=selector.len() {
        match selector.get(i) {
            Some(_) if escaped => escaped = false,
            Some(b'\\') => escaped = true,
            Some(b',') | None => {
                let term = &selector[start..i];
                start = i + 1;
                if term.is_empty() {
                    continue;
                }
                let (field, equals, value) = split_term(term).ok_or(())?;
                unescape_value(value)?;
                if equals
                    && field == b"metadata.name"
                    && best.is_none_or(|(smallest, _)| term < smallest)
                {
                    best = Some((term, value));
                }
            }
            Some(_) => {}
        }
    }
    best.map(|(_, value)| unescape_value(value)).transpose()
}

/// `field`, whether the operator is `=`/`==` (not `!=`), and the raw value.
fn split_term(term: &[u8]) -> Option<(&[u8], bool, &[u8])> {
    (0..term.len()).find_map(|i| {
        let rest = &term[i..];
        if rest.starts_with(b"!=") {
            Some((&term[..i], false, &rest[2..]))
        } else if rest.starts_with(b"==") {
            Some((&term[..i], true, &rest[2..]))
        } else if rest.starts_with(b"=") {
            Some((&term[..i], true, &rest[1..]))
        } else {
            None
        }
    })
}

/// A field selector value with its `\\`, `\,` and `\=` escapes undone.
fn unescape_value(value: &[u8]) -> Result<Cow<'_, [u8]>, ()> {
    if !value.iter().any(|b| matches!(b, b'\\' | b',' | b'=')) {
        return Ok(Cow::Borrowed(value));
    }
    let mut out = Vec::with_capacity(value.len());
    let mut escaped = false;
    for &b in value {
        match (escaped, b) {
            (true, b'\\' | b',' | b'=') => {
                out.push(b);
                escaped = false;
            }
            (true, _) | (false, b',' | b'=') => return Err(()),
            (false, b'\\') => escaped = true,
            (false, _) => out.push(b),
        }
    }
    if escaped {
        return Err(());
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::{self, Endpoint};
    use proptest::prelude::*;

    /// The fields a row checks, as strings.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Exp {
        resource_request: bool,
        verb: &'static str,
        prefix: &'static str,
        group: &'static str,
        version: &'static str,
        namespace: &'static str,
        resource: &'static str,
        name: &'static str,
        subresource: &'static str,
        parts: &'static str,
        field_selector: &'static str,
        label_selector: &'static str,
    }

    /// A core-group resource request; rows fill in the rest.
    const CORE: Exp = Exp {
        resource_request: true,
        verb: "",
        prefix: "api",
        group: "",
        version: "v1",
        namespace: "",
        resource: "",
        name: "",
        subresource: "",
        parts: "",
        field_selector: "",
        label_selector: "",
    };
    /// An `apps/v1` resource request.
    const APPS: Exp = Exp {
        prefix: "apis",
        group: "apps",
        ..CORE
    };
    /// A non-resource request (the verb is the lower-cased method).
    const NON: Exp = Exp {
        resource_request: false,
        prefix: "",
        version: "",
        ..CORE
    };

    fn got(i: &RequestInfo<'_>) -> Exp {
        // Leak: a test-only way to compare borrowed and owned fields alike.
        let s = |v: &str| -> &'static str { Box::leak(v.to_owned().into_boxed_str()) };
        Exp {
            resource_request: i.is_resource_request,
            verb: s(i.verb.as_str()),
            prefix: s(i.api_prefix),
            group: s(i.api_group),
            version: s(i.api_version),
            namespace: s(i.namespace),
            resource: s(i.resource),
            name: s(&i.name),
            subresource: s(i.subresource),
            parts: s(i.parts),
            field_selector: s(&i.field_selector),
            label_selector: s(&i.label_selector),
        }
    }

    fn info<'a>(method: &str, target: &'a str) -> Result<RequestInfo<'a>, RequestInfoError> {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        request_info(method, path, query)
    }

    /// (what a user relies on, method, path?query, what kube-apiserver reads)
    #[rustfmt::skip]
    const ROWS: &[(&str, &str, &str, Exp)] = &[
        // Core and named groups; cluster-scoped and namespaced.
        ("core list across all namespaces", "GET", "/api/v1/pods",
            Exp { verb: "list", resource: "pods", parts: "pods", ..CORE }),
        ("core list in a namespace", "GET", "/api/v1/namespaces/ns/pods",
            Exp { verb: "list", namespace: "ns", resource: "pods", parts: "pods", ..CORE }),
        ("core get in a namespace", "GET", "/api/v1/namespaces/ns/pods/p",
            Exp { verb: "get", namespace: "ns", resource: "pods", name: "p", parts: "pods/p", ..CORE }),
        ("named group get", "GET", "/apis/apps/v1/namespaces/ns/deployments/web",
            Exp { verb: "get", namespace: "ns", resource: "deployments", name: "web", parts: "deployments/web", ..APPS }),
        ("named group list across namespaces", "GET", "/apis/apps/v1/deployments",
            Exp { verb: "list", resource: "deployments", parts: "deployments", ..APPS }),
        ("other versions are read as given", "POST", "/apis/batch/v1beta1/namespaces/ns/cronjobs",
            Exp { verb: "create", group: "batch", version: "v1beta1", namespace: "ns", resource: "cronjobs", parts: "cronjobs", ..APPS }),
        ("cluster-scoped get has no namespace", "GET", "/api/v1/nodes/n1",
            Exp { verb: "get", resource: "nodes", name: "n1", parts: "nodes/n1", ..CORE }),
        ("cluster-scoped list", "GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            Exp { verb: "list", group: "rbac.authorization.k8s.io", resource: "clusterroles", parts: "clusterroles", ..APPS }),

        // The namespace object itself.
        ("list of namespaces: no namespace", "GET", "/api/v1/namespaces",
            Exp { verb: "list", resource: "namespaces", parts: "namespaces", ..CORE }),
        ("a namespace object: its namespace is itself", "GET", "/api/v1/namespaces/foo",
            Exp { verb: "get", namespace: "foo", resource: "namespaces", name: "foo", parts: "namespaces/foo", ..CORE }),
        ("namespace status is a subresource, not a resource in foo", "PUT", "/api/v1/namespaces/foo/status",
            Exp { verb: "update", namespace: "foo", resource: "namespaces", name: "foo", subresource: "status", parts: "namespaces/foo/status", ..CORE }),
        ("namespace finalize is a subresource", "PUT", "/api/v1/namespaces/foo/finalize",
            Exp { verb: "update", namespace: "foo", resource: "namespaces", name: "foo", subresource: "finalize", parts: "namespaces/foo/finalize", ..CORE }),
        ("create a namespace", "POST", "/api/v1/namespaces",
            Exp { verb: "create", resource: "namespaces", parts: "namespaces", ..CORE }),
        ("delete a namespace", "DELETE", "/api/v1/namespaces/foo",
            Exp { verb: "delete", namespace: "foo", resource: "namespaces", name: "foo", parts: "namespaces/foo", ..CORE }),
        ("a namespace named status", "GET", "/api/v1/namespaces/status",
            Exp { verb: "get", namespace: "status", resource: "namespaces", name: "status", parts: "namespaces/status", ..CORE }),
        ("pods in a namespace named status", "GET", "/api/v1/namespaces/status/pods",
            Exp { verb: "list", namespace: "status", resource: "pods", parts: "pods", ..CORE }),
        ("a pod named status is not a subresource", "GET", "/api/v1/namespaces/ns/pods/status",
            Exp { verb: "get", namespace: "ns", resource: "pods", name: "status", parts: "pods/status", ..CORE }),
        ("the namespace rule ignores the group", "GET", "/apis/apps/v1/namespaces/foo/status",
            Exp { verb: "get", namespace: "foo", resource: "namespaces", name: "foo", subresource: "status", parts: "namespaces/foo/status", ..APPS }),

        // Every method.
        ("POST creates", "POST", "/api/v1/namespaces/ns/pods",
            Exp { verb: "create", namespace: "ns", resource: "pods", parts: "pods", ..CORE }),
        ("HEAD is a get", "HEAD", "/api/v1/namespaces/ns/pods/p",
            Exp { verb: "get", namespace: "ns", resource: "pods", name: "p", parts: "pods/p", ..CORE }),
        ("HEAD without a name is a list", "HEAD", "/api/v1/pods",
            Exp { verb: "list", resource: "pods", parts: "pods", ..CORE }),
        ("PUT updates", "PUT", "/api/v1/namespaces/ns/pods/p",
            Exp { verb: "update", namespace: "ns", resource: "pods", name: "p", parts: "pods/p", ..CORE }),
        ("PUT without a name stays update", "PUT", "/api/v1/namespaces/ns/pods",
            Exp { verb: "update", namespace: "ns", resource: "pods", parts: "pods", ..CORE }),
        ("PATCH patches", "PATCH", "/apis/apps/v1/namespaces/ns/deployments/web",
            Exp { verb: "patch", namespace: "ns", resource: "deployments", name: "web", parts: "deployments/web", ..APPS }),
        ("DELETE with a name deletes", "DELETE", "/api/v1/namespaces/ns/pods/p",
            Exp { verb: "delete", namespace: "ns", resource: "pods", name: "p", parts: "pods/p", ..CORE }),
        ("DELETE without a name is deletecollection", "DELETE", "/api/v1/namespaces/ns/pods",
            Exp { verb: "deletecollection", namespace: "ns", resource: "pods", parts: "pods", ..CORE }),
        ("cluster-wide deletecollection", "DELETE", "/api/v1/nodes",
            Exp { verb: "deletecollection", resource: "nodes", parts: "nodes", ..CORE }),
        ("deletecollection records selectors, takes no name from them", "DELETE", "/api/v1/namespaces/ns/pods?fieldSelector=metadata.name%3Dp&labelSelector=app%3Dweb",
            Exp { verb: "deletecollection", namespace: "ns", resource: "pods", parts: "pods", field_selector: "metadata.name=p", label_selector: "app=web", ..CORE }),
        ("OPTIONS has the empty verb", "OPTIONS", "/api/v1/namespaces/ns/pods/p",
            Exp { verb: "", namespace: "ns", resource: "pods", name: "p", parts: "pods/p", ..CORE }),
        ("methods are case-sensitive", "get", "/api/v1/namespaces/ns/pods/p",
            Exp { verb: "", namespace: "ns", resource: "pods", name: "p", parts: "pods/p", ..CORE }),
        ("watch=true only turns a GET into a watch", "POST", "/api/v1/namespaces/ns/pods?watch=true",
            Exp { verb: "create", namespace: "ns", resource: "pods", parts: "pods", ..CORE }),

        // Subresources.
        ("status get", "GET", "/api/v1/namespaces/ns/pods/p/status",
            Exp { verb: "get", namespace: "ns", resource: "pods", name: "p", subresource: "status", parts: "pods/p/status", ..CORE }),
        ("status patch", "PATCH", "/apis/apps/v1/namespaces/ns/deployments/web/status",
            Exp { verb: "patch", namespace: "ns", resource: "deployments", name: "web", subresource: "status", parts: "deployments/web/status", ..APPS }),
        ("logs are a get of pods/log", "GET", "/api/v1/namespaces/ns/pods/p/log?follow=true&container=c",
            Exp { verb: "get", namespace: "ns", resource: "pods", name: "p", subresource: "log", parts: "pods/p/log", ..CORE }),
        ("exec by POST is create", "POST", "/api/v1/namespaces/ns/pods/p/exec?command=ls&stdout=true",
            Exp { verb: "create", namespace: "ns", resource: "pods", name: "p", subresource: "exec", parts: "pods/p/exec", ..CORE }),
        ("exec by GET (websocket) is get", "GET", "/api/v1/namespaces/ns/pods/p/exec?command=ls",
            Exp { verb: "get", namespace: "ns", resource: "pods", name: "p", subresource: "exec", parts: "pods/p/exec", ..CORE }),
        ("attach", "POST", "/api/v1/namespaces/ns/pods/p/attach",
            Exp { verb: "create", namespace: "ns", resource: "pods", name: "p", subresource: "attach", parts: "pods/p/attach", ..CORE }),
        ("portforward by POST", "POST", "/api/v1/namespaces/ns/pods/p/portforward",
            Exp { verb: "create", namespace: "ns", resource: "pods", name: "p", subresource: "portforward", parts: "pods/p/portforward", ..CORE }),
        ("portforward by GET", "GET", "/api/v1/namespaces/ns/pods/p/portforward?ports=80",
            Exp { verb: "get", namespace: "ns", resource: "pods", name: "p", subresource: "portforward", parts: "pods/p/portforward", ..CORE }),
        ("scale get", "GET", "/apis/apps/v1/namespaces/ns/deployments/web/scale",
            Exp { verb: "get", namespace: "ns", resource: "deployments", name: "web", subresource: "scale", parts: "deployments/web/scale", ..APPS }),
        ("scale update", "PUT", "/apis/apps/v1/namespaces/ns/deployments/web/scale",
            Exp { verb: "update", namespace: "ns", resource: "deployments", name: "web", subresource: "scale", parts: "deployments/web/scale", ..APPS }),
        ("proxy subresource keeps its name and trailing path", "GET", "/api/v1/namespaces/ns/pods/web:8080/proxy/some/path",
            Exp { verb: "get", namespace: "ns", resource: "pods", name: "web:8080", subresource: "proxy", parts: "pods/web:8080/proxy/some/path", ..CORE }),
        ("service proxy by POST", "POST", "/api/v1/namespaces/ns/services/https:svc:443/proxy/",
            Exp { verb: "create", namespace: "ns", resource: "services", name: "https:svc:443", subresource: "proxy", parts: "services/https:svc:443/proxy", ..CORE }),
        ("node proxy", "GET", "/api/v1/nodes/n1/proxy/metrics",
            Exp { verb: "get", resource: "nodes", name: "n1", subresource: "proxy", parts: "nodes/n1/proxy/metrics", ..CORE }),

        // The deprecated verb prefixes.
        ("watch prefix", "GET", "/api/v1/watch/pods",
            Exp { verb: "watch", resource: "pods", parts: "pods", ..CORE }),
        ("watch prefix in a namespace", "GET", "/api/v1/watch/namespaces/ns/pods",
            Exp { verb: "watch", namespace: "ns", resource: "pods", parts: "pods", ..CORE }),
        ("watch prefix of one object", "GET", "/api/v1/watch/namespaces/ns/pods/p",
            Exp { verb: "watch", namespace: "ns", resource: "pods", name: "p", parts: "pods/p", ..CORE }),
        ("watch prefix in a named group", "GET", "/apis/apps/v1/watch/namespaces/ns/deployments",
            Exp { verb: "watch", namespace: "ns", resource: "deployments", parts: "deployments", ..APPS }),
        ("watch prefix wins over the method", "POST", "/api/v1/watch/pods",
            Exp { verb: "watch", resource: "pods", parts: "pods", ..CORE }),
        ("watch prefix of namespaces", "GET", "/api/v1/watch/namespaces",
            Exp { verb: "watch", resource: "namespaces", parts: "namespaces", ..CORE }),
        ("watch prefix of one namespace", "GET", "/api/v1/watch/namespaces/foo",
            Exp { verb: "watch", namespace: "foo", resource: "namespaces", name: "foo", parts: "namespaces/foo", ..CORE }),
        ("watch prefix: no selectors recorded, no name from them", "GET", "/api/v1/watch/pods?fieldSelector=metadata.name%3Dp",
            Exp { verb: "watch", resource: "pods", parts: "pods", ..CORE }),
        ("proxy prefix: no subresource, the rest is the proxied path", "GET", "/api/v1/proxy/namespaces/ns/pods/p/sub/path",
            Exp { verb: "proxy", namespace: "ns", resource: "pods", name: "p", parts: "pods/p/sub/path", ..CORE }),
        ("proxy prefix, cluster-scoped", "DELETE", "/api/v1/proxy/nodes/n1",
            Exp { verb: "proxy", resource: "nodes", name: "n1", parts: "nodes/n1", ..CORE }),

        // watch in the query.
        ("watch=true", "GET", "/api/v1/namespaces/ns/pods?watch=true",
            Exp { verb: "watch", namespace: "ns", resource: "pods", parts: "pods", ..CORE }),
        ("watch=1", "GET", "/api/v1/pods?watch=1",
            Exp { verb: "watch", resource: "pods", parts: "pods", ..CORE }),
        ("watch=false", "GET", "/api/v1/pods?watch=false",
            Exp { verb: "list", resource: "pods", parts: "pods", ..CORE }),
        ("watch=0", "GET", "/api/v1/pods?watch=0",
            Exp { verb: "list", resource: "pods", parts: "pods", ..CORE }),
        ("watch=FALSE: any case", "GET", "/api/v1/pods?watch=FALSE",
            Exp { verb: "list", resource: "pods", parts: "pods", ..CORE }),
        ("watch=yes: anything else is true", "GET", "/api/v1/pods?watch=yes",
            Exp { verb: "watch", resource: "pods", parts: "pods", ..CORE }),
        ("watch= (empty) is true", "GET", "/api/v1/pods?watch=",
            Exp { verb: "watch", resource: "pods", parts: "pods", ..CORE }),
        ("watch without = is true", "GET", "/api/v1/pods?limit=5&watch",
            Exp { verb: "watch", resource: "pods", parts: "pods", ..CORE }),
        ("the first watch value counts", "GET", "/api/v1/pods?watch=false&watch=true",
            Exp { verb: "list", resource: "pods", parts: "pods", ..CORE }),
        ("keys are percent-decoded", "GET", "/api/v1/pods?wat%63h=1",
            Exp { verb: "watch", resource: "pods", parts: "pods", ..CORE }),
        ("values are percent-decoded", "GET", "/api/v1/pods?watch=%30",
            Exp { verb: "list", resource: "pods", parts: "pods", ..CORE }),
        ("a pair with a semicolon is dropped", "GET", "/api/v1/pods?watch=true;x=1",
            Exp { verb: "list", resource: "pods", parts: "pods", ..CORE }),
        ("a pair with a bad escape is dropped; the next one counts", "GET", "/api/v1/pods?watch=%zz&watch=0",
            Exp { verb: "list", resource: "pods", parts: "pods", ..CORE }),
        ("watch on a named get is ignored", "GET", "/api/v1/namespaces/ns/pods/p?watch=1",
            Exp { verb: "get", namespace: "ns", resource: "pods", name: "p", parts: "pods/p", ..CORE }),
        ("watch=falſe folds to false when the options decode", "GET", "/api/v1/pods?watch=fal%C5%BFe",
            Exp { verb: "list", resource: "pods", parts: "pods", ..CORE }),
        ("…and is a watch when they do not (lower-casing keeps ſ)", "GET", "/api/v1/pods?watch=fal%C5%BFe&limit=x",
            Exp { verb: "watch", resource: "pods", parts: "pods", ..CORE }),

        // fieldSelector=metadata.name on lists and watches.
        ("metadata.name names a list", "GET", "/api/v1/namespaces/ns/pods?fieldSelector=metadata.name%3Dp",
            Exp { verb: "list", namespace: "ns", resource: "pods", name: "p", parts: "pods", field_selector: "metadata.name=p", ..CORE }),
        ("…and a watch (client-go's informer for one object)", "GET", "/api/v1/namespaces/ns/configmaps?watch=true&fieldSelector=metadata.name=cm&resourceVersion=5",
            Exp { verb: "watch", namespace: "ns", resource: "configmaps", name: "cm", parts: "configmaps", field_selector: "metadata.name=cm", ..CORE }),
        ("== works too", "GET", "/api/v1/nodes?fieldSelector=metadata.name%3D%3Dn1",
            Exp { verb: "list", resource: "nodes", name: "n1", parts: "nodes", field_selector: "metadata.name==n1", ..CORE }),
        ("!= names nothing", "GET", "/api/v1/nodes?fieldSelector=metadata.name!%3Dn1",
            Exp { verb: "list", resource: "nodes", parts: "nodes", field_selector: "metadata.name!=n1", ..CORE }),
        ("among other terms", "GET", "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1,metadata.name%3Dp",
            Exp { verb: "list", resource: "pods", name: "p", parts: "pods", field_selector: "spec.nodeName=n1,metadata.name=p", ..CORE }),
        ("terms are sorted: the smallest metadata.name term wins", "GET", "/api/v1/pods?fieldSelector=metadata.name%3Db,metadata.name%3Da",
            Exp { verb: "list", resource: "pods", name: "a", parts: "pods", field_selector: "metadata.name=b,metadata.name=a", ..CORE }),
        ("escaped commas are unescaped", "GET", "/api/v1/pods?fieldSelector=metadata.name%3Dp%5C%2Cq",
            Exp { verb: "list", resource: "pods", name: "p,q", parts: "pods", field_selector: "metadata.name=p\\,q", ..CORE }),
        ("an unparsable selector names nothing", "GET", "/api/v1/pods?fieldSelector=metadata.name%3Dp,foo",
            Exp { verb: "list", resource: "pods", parts: "pods", field_selector: "metadata.name=p,foo", ..CORE }),
        ("…nor does one with an unescaped = in the value", "GET", "/api/v1/pods?fieldSelector=metadata.name%3Da%3Db",
            Exp { verb: "list", resource: "pods", parts: "pods", field_selector: "metadata.name=a=b", ..CORE }),
        ("field names are not trimmed", "GET", "/api/v1/pods?fieldSelector=metadata.name+%3Dp",
            Exp { verb: "list", resource: "pods", parts: "pods", field_selector: "metadata.name =p", ..CORE }),
        ("a name that is no path segment names nothing", "GET", "/api/v1/pods?fieldSelector=metadata.name%3Da/b",
            Exp { verb: "list", resource: "pods", parts: "pods", field_selector: "metadata.name=a/b", ..CORE }),
        ("nor does ..", "GET", "/api/v1/pods?fieldSelector=metadata.name%3D..",
            Exp { verb: "list", resource: "pods", parts: "pods", field_selector: "metadata.name=..", ..CORE }),
        ("valid other options keep the name", "GET", "/api/v1/pods?fieldSelector=metadata.name%3Dp&limit=500&timeoutSeconds=30&labelSelector=app%3Dweb",
            Exp { verb: "list", resource: "pods", name: "p", parts: "pods", field_selector: "metadata.name=p", label_selector: "app=web", ..CORE }),
        ("an invalid limit drops the name", "GET", "/api/v1/pods?fieldSelector=metadata.name%3Dp&limit=x",
            Exp { verb: "list", resource: "pods", parts: "pods", field_selector: "metadata.name=p", ..CORE }),
        ("an empty timeoutSeconds is invalid too", "GET", "/api/v1/pods?fieldSelector=metadata.name%3Dp&timeoutSeconds=",
            Exp { verb: "list", resource: "pods", parts: "pods", field_selector: "metadata.name=p", ..CORE }),
        ("an invalid label selector drops the name", "GET", "/api/v1/pods?fieldSelector=metadata.name%3Dp&labelSelector=a+b",
            Exp { verb: "list", resource: "pods", parts: "pods", field_selector: "metadata.name=p", label_selector: "a b", ..CORE }),
        ("a named get keeps its name and records no selector", "GET", "/api/v1/namespaces/ns/pods/q?fieldSelector=metadata.name%3Dp",
            Exp { verb: "get", namespace: "ns", resource: "pods", name: "q", parts: "pods/q", ..CORE }),

        // Not resource requests: the verb is the lower-cased method.
        ("root", "GET", "/", Exp { verb: "get", ..NON }),
        ("empty path", "GET", "", Exp { verb: "get", ..NON }),
        ("version", "GET", "/version", Exp { verb: "get", ..NON }),
        ("health", "GET", "/healthz", Exp { verb: "get", ..NON }),
        ("health check", "GET", "/livez/ping", Exp { verb: "get", ..NON }),
        ("openapi v2", "GET", "/openapi/v2", Exp { verb: "get", ..NON }),
        ("openapi v3 of a group version", "GET", "/openapi/v3/apis/apps/v1", Exp { verb: "get", ..NON }),
        ("metrics by HEAD", "HEAD", "/metrics", Exp { verb: "head", ..NON }),
        ("other methods lower-cased", "FOO", "/version", Exp { verb: "foo", ..NON }),
        ("POST to a non-resource path", "POST", "/apis", Exp { verb: "post", ..NON }),
        ("core discovery", "GET", "/api", Exp { verb: "get", ..NON }),
        ("core version discovery", "GET", "/api/v1", Exp { verb: "get", ..NON }),
        ("core version discovery, trailing slashes", "GET", "/api/v1///", Exp { verb: "get", ..NON }),
        ("group discovery", "GET", "/apis", Exp { verb: "get", ..NON }),
        ("one group", "GET", "/apis/apps", Exp { verb: "get", ..NON }),
        ("group version discovery: kube-apiserver has read the prefix", "GET", "/apis/apps/v1",
            Exp { verb: "get", prefix: "apis", ..NON }),
        ("…also with a trailing slash", "GET", "/apis/apps/v1/", Exp { verb: "get", prefix: "apis", ..NON }),
        ("a group with no version is too short", "GET", "/apis/v1/pods", Exp { verb: "get", prefix: "apis", ..NON }),
        ("an unknown prefix", "GET", "/badprefix/v1/pods", Exp { verb: "get", ..NON }),
        ("prefixes are case-sensitive", "GET", "/API/v1/pods", Exp { verb: "get", ..NON }),

        // Slashes and empty segments: slashes at the ends are trimmed, empty segments inside kept.
        ("a trailing slash", "GET", "/api/v1/pods/",
            Exp { verb: "list", resource: "pods", parts: "pods", ..CORE }),
        ("leading and trailing slashes", "GET", "//api/v1/namespaces/ns//",
            Exp { verb: "get", namespace: "ns", resource: "namespaces", name: "ns", parts: "namespaces/ns", ..CORE }),
        ("an empty namespace is all namespaces", "GET", "/api/v1/namespaces//pods",
            Exp { verb: "list", resource: "pods", parts: "pods", ..CORE }),
        ("an empty segment shifts what follows", "GET", "/api//v1/pods",
            Exp { verb: "get", version: "", resource: "v1", name: "pods", parts: "v1/pods", ..CORE }),
        ("an empty name is no name", "GET", "/api/v1/namespaces/ns/pods//status",
            Exp { verb: "list", namespace: "ns", resource: "pods", subresource: "status", parts: "pods//status", ..CORE }),
        ("…so a DELETE there is a deletecollection", "DELETE", "/api/v1/namespaces/ns/pods//x",
            Exp { verb: "deletecollection", namespace: "ns", resource: "pods", subresource: "x", parts: "pods//x", ..CORE }),
        ("an empty resource", "GET", "/api/v1//x",
            Exp { verb: "get", resource: "", name: "x", parts: "/x", ..CORE }),

        // Junk kube-apiserver still reads as resource requests.
        ("segments past the subresource are kept in parts", "GET", "/api/v1/namespaces/ns/pods/p/log/extra",
            Exp { verb: "get", namespace: "ns", resource: "pods", name: "p", subresource: "log", parts: "pods/p/log/extra", ..CORE }),
        ("namespace status with more after it", "GET", "/api/v1/namespaces/ns/status/extra",
            Exp { verb: "get", namespace: "ns", resource: "namespaces", name: "ns", subresource: "status", parts: "namespaces/ns/status/extra", ..CORE }),
        ("a resource named watch deeper in the path is just a name", "GET", "/api/v1/namespaces/ns/pods/watch",
            Exp { verb: "get", namespace: "ns", resource: "pods", name: "watch", parts: "pods/watch", ..CORE }),
    ];

    #[test]
    fn table() {
        let mut failures = Vec::new();
        for (why, method, target, want) in ROWS {
            match info(method, target) {
                Ok(i) if got(&i) == *want => {}
                other => failures.push(format!(
                    "{why}: {method} {target}\n  want {want:?}\n  got  {:?}",
                    other.map(|i| got(&i))
                )),
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn verb_prefix_with_nothing_after_it_fails_as_in_kube_apiserver() {
        for target in [
            "/api/v1/watch",
            "/api/v1/watch/",
            "/api/v1/proxy",
            "/apis/apps/v1/watch",
        ] {
            let e = info("GET", target).unwrap_err();
            assert!(matches!(e, RequestInfoError::NoResource { .. }), "{target}");
            assert_eq!(e.to_status().code, 500);
        }
        let e = info("GET", "/api/v1/watch?watch=1").unwrap_err();
        assert_eq!(
            e.to_status().message,
            "Internal error occurred: failed to create RequestInfo: \
             unable to determine kind and namespace from url, /api/v1/watch?watch=1"
        );
    }

    #[test]
    fn connect_and_read() {
        let i = |m, t| info(m, t).unwrap();
        for (m, t) in [
            ("POST", "/api/v1/namespaces/ns/pods/p/exec"),
            ("GET", "/api/v1/namespaces/ns/pods/p/exec"),
            ("POST", "/api/v1/namespaces/ns/pods/p/attach"),
            ("GET", "/api/v1/namespaces/ns/pods/p/portforward"),
            ("GET", "/api/v1/namespaces/ns/pods/web:80/proxy/x"),
            ("GET", "/api/v1/proxy/namespaces/ns/pods/p/x"),
        ] {
            assert!(i(m, t).is_connect(), "{m} {t}");
        }
        for (m, t) in [
            ("GET", "/api/v1/namespaces/ns/pods/p/log"),
            ("GET", "/api/v1/namespaces/ns/pods"),
            ("GET", "/api/v1/namespaces/ns/pods/exec"), // a pod named exec
            ("GET", "/exec"),
        ] {
            assert!(!i(m, t).is_connect(), "{m} {t}");
        }
        for (t, read) in [
            ("/api/v1/pods", true),
            ("/api/v1/pods?watch=1", true),
            ("/api/v1/namespaces/ns/pods/p", true),
            ("/api/v1/namespaces/ns/pods/p/exec", true), // GET exec is a get: check is_connect
            ("/version", false),                         // non-resource "get"
            ("/api/v1/proxy/nodes/n", false),
        ] {
            assert_eq!(i("GET", t).is_read(), read, "{t}");
        }
        assert!(!i("DELETE", "/api/v1/pods").is_read());
    }

    #[test]
    fn verbs_spelled_as_kube_apiserver_spells_them() {
        let all = [
            (Verb::Get, "get"),
            (Verb::List, "list"),
            (Verb::Watch, "watch"),
            (Verb::Create, "create"),
            (Verb::Update, "update"),
            (Verb::Patch, "patch"),
            (Verb::Delete, "delete"),
            (Verb::DeleteCollection, "deletecollection"),
            (Verb::Proxy, "proxy"),
            (Verb::Unknown, ""),
            (Verb::NonResource("options".into()), "options"),
        ];
        for (verb, word) in all {
            assert_eq!(verb.as_str(), word);
            assert_eq!(verb.to_string(), word);
            // Only an unusual method's (owned) spelling is not static.
            let owned = matches!(verb, Verb::NonResource(Cow::Owned(_)));
            assert_eq!(verb.as_static_str(), (!owned).then_some(word));
        }
        assert_eq!(
            info("OPTIONS", "/version").unwrap().verb,
            Verb::NonResource(Cow::Borrowed("options"))
        );
        let odd = info("PROPFIND", "/version").unwrap().verb;
        assert_eq!((odd.as_str(), odd.as_static_str()), ("propfind", None));
    }

    #[test]
    fn fields_borrow_unless_decoded() {
        let i = info("GET", "/api/v1/pods?fieldSelector=metadata.name=p").unwrap();
        assert!(matches!(i.name, Cow::Borrowed("p")));
        assert!(matches!(i.field_selector, Cow::Borrowed("metadata.name=p")));
        let i = info("GET", "/api/v1/pods?fieldSelector=metadata.name%3Dp").unwrap();
        assert!(matches!(i.name, Cow::Owned(ref n) if n == "p"));
        let i = info("GET", "/api/v1/namespaces/ns/pods/p").unwrap();
        assert!(matches!(i.name, Cow::Borrowed("p")));
        assert_eq!(i.parts().collect::<Vec<_>>(), ["pods", "p"]);
        assert_eq!(info("GET", "/version").unwrap().parts().count(), 0);
    }

    #[test]
    fn not_utf8_after_decoding_names_nothing() {
        // Go would take the bytes; a str cannot hold them.
        let i = info("GET", "/api/v1/pods?fieldSelector=metadata.name%3D%FF").unwrap();
        assert_eq!((i.verb, &*i.name, &*i.field_selector), (Verb::List, "", ""));
    }

    #[test]
    fn paths_decode_as_go_decodes_them() {
        assert!(matches!(decode_path("/api/v1/pods"), Ok(Cow::Borrowed(_))));
        assert_eq!(decode_path("/a+b%20c").unwrap(), "/a+b c");
        assert_eq!(decode_path("/caf%C3%A9").unwrap(), "/café");
        assert_eq!(
            decode_path("/a%41%zz").unwrap_err(),
            RequestInfoError::InvalidEscape("%zz".into())
        );
        assert_eq!(
            decode_path("/a%4").unwrap_err(),
            RequestInfoError::InvalidEscape("%4".into())
        );
        assert_eq!(decode_path("/%FF").unwrap_err(), RequestInfoError::NotUtf8);
        assert_eq!(decode_path("/%").unwrap_err().to_status().code, 400);
        // An encoded slash splits a segment, as kube-apiserver reads it.
        let path = decode_path("/api/v1/namespaces/a%2Fb/pods").unwrap();
        let i = request_info("GET", &path, "").unwrap();
        assert_eq!((i.namespace, i.resource, &*i.name), ("a", "b", "pods"));
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "api",
                "apis",
                "v1",
                "apps",
                "namespaces",
                "ns",
                "status",
                "finalize",
                "pods",
                "p",
                "watch",
                "proxy",
                "log",
                "exec",
                "",
                "version",
                "openapi",
            ])
            .prop_map(str::to_owned),
            "[a-z:/.%]{0,4}",
        ]
    }

    fn request_path() -> impl Strategy<Value = String> {
        (
            prop::sample::select(vec!["/", "//", ""]),
            prop::collection::vec(segment(), 0..8),
            prop::sample::select(vec!["", "/", "//"]),
        )
            .prop_map(|(lead, segs, trail)| format!("{lead}{}{trail}", segs.join("/")))
    }

    fn query() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec![
            "watch",
            "fieldSelector",
            "labelSelector",
            "limit",
            "timeoutSeconds",
            "x",
            "",
        ]);
        let value = prop_oneof![
            prop::sample::select(vec![
                "true",
                "1",
                "0",
                "false",
                "metadata.name%3Dp",
                "metadata.name=a,b",
                "a\\",
                "%",
                "%zz",
                "fal%C5%BFe",
                "%FF",
                "5",
                "",
            ])
            .prop_map(str::to_owned),
            "[a-z=,%;\\\\.!+]{0,6}",
        ];
        prop::collection::vec((key, value), 0..5).prop_map(|pairs| {
            pairs
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&")
        })
    }

    fn method() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"
            ])
            .prop_map(str::to_owned),
            "[A-Za-z]{0,7}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any input: no panic, and the fields hang together.
        #[test]
        fn never_panics(method in method(), path in any::<String>(), query in any::<String>()) {
            let _ = decode_path(&path);
            if let Ok(i) = request_info(&method, &path, &query) {
                let _ = (i.is_connect(), i.is_read(), i.parts().count());
            }
        }

        /// API-shaped input: kube-apiserver's invariants hold.
        #[test]
        fn fields_agree_with_parts(method in method(), path in request_path(), query in query()) {
            let Ok(i) = request_info(&method, &path, &query) else {
                return Ok(());
            };
            if !i.is_resource_request {
                prop_assert_eq!(i.verb, Verb::non_resource(&method));
                prop_assert_eq!(
                    (i.api_group, i.api_version, i.namespace, i.resource, i.parts),
                    ("", "", "", "", "")
                );
                return Ok(());
            }
            let parts: Vec<&str> = i.parts().collect();
            prop_assert_eq!(parts[0], i.resource);
            // A name comes from the path, or from the field selector of a list or watch.
            prop_assert!(
                i.name.is_empty()
                    || parts.get(1) == Some(&&*i.name)
                    || matches!(i.verb, Verb::List | Verb::Watch)
            );
            let subresource = match i.verb {
                Verb::Proxy => "",
                _ => parts.get(2).copied().unwrap_or(""),
            };
            prop_assert_eq!(i.subresource, subresource);
            prop_assert!(!matches!(i.verb, Verb::Delete) || !i.name.is_empty());
            prop_assert!(!matches!(i.verb, Verb::Get) || !i.name.is_empty());
        }

        /// Where `path::parse` sees a resource, kube-apiserver's reading is the same. Request
        /// targets start with '/' (the hub's resolve phase adds it); `path::parse` ignores
        /// whatever precedes the first '/', so a path without one is not a request target.
        #[test]
        fn agrees_with_path_parse(path in request_path()) {
            let path = if path.starts_with('/') { path } else { format!("/{path}") };
            let i = request_info("PUT", &path, "");
            if let (Endpoint::Resource(rp), Ok(i)) = (path::parse(&path), i) {
                if i.verb == Verb::Update {
                    prop_assert_eq!(
                        (rp.group, rp.version, rp.resource),
                        (i.api_group, i.api_version, i.resource)
                    );
                    prop_assert_eq!(rp.name.unwrap_or(""), &*i.name);
                    prop_assert_eq!(rp.subresource.unwrap_or(""), i.subresource);
                    // path::parse gives the namespace object no namespace; kube-apiserver its name.
                    let namespace =
                        rp.namespace.or(rp.name.filter(|_| rp.resource == "namespaces"));
                    prop_assert_eq!(namespace.unwrap_or(""), i.namespace);
                }
            }
        }
    }
}
