//! List and watch options from the query string, validated as kube-apiserver validates them.

use crate::status::Status;
use std::borrow::Cow;

/// `resourceVersionMatch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionMatch {
    /// Data at least as new as the given version.
    NotOlderThan,
    /// Data at exactly the given version.
    Exact,
}

/// The resourceVersion semantics a list or watch asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Unset: the most recent data (a consistent read).
    MostRecent,
    /// `"0"`: any data the server has, however old.
    Any,
    /// A specific version, with how to match it.
    At(u64, VersionMatch),
}

/// `includeObject` for Table output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncludeObject {
    /// No object in rows.
    None,
    /// `PartialObjectMetadata` in each row (the default).
    #[default]
    Metadata,
    /// The whole object in each row.
    Object,
}

/// The options of a get, list or watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOptions {
    /// `labelSelector`
    pub label_selector: Option<String>,
    /// `fieldSelector`
    pub field_selector: Option<String>,
    /// `limit` (0 or absent: no limit)
    pub limit: Option<u64>,
    /// `continue`
    pub continue_token: Option<String>,
    /// `resourceVersion` with `resourceVersionMatch`.
    pub version: Version,
    /// `watch`
    pub watch: bool,
    /// `allowWatchBookmarks`
    pub allow_bookmarks: bool,
    /// `timeoutSeconds`
    pub timeout_seconds: Option<u64>,
    /// `sendInitialEvents`
    pub send_initial_events: bool,
    /// `includeObject`
    pub include_object: IncludeObject,
}

/// A query string split into decoded pairs, borrowing from it where nothing was
/// percent-decoded (the request path parses every query: most allocate only the list).
#[derive(Debug, Clone, Default)]
pub struct Query<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'a> Query<'a> {
    /// Parses `a=1&b=2` (without the `?`); percent-decoding applied.
    pub fn parse(query: &'a str) -> Query<'a> {
        Query(
            form_urlencoded::parse(query.as_bytes())
                .filter(|(k, _)| !k.is_empty())
                .collect(),
        )
    }

    /// The parameter names, in order (repeated names repeat).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| &**k)
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| &**v)
    }

    /// Every value of `name`, in order (`command=sh&command=-c`).
    pub fn get_all<'b>(&'b self, name: &'b str) -> impl Iterator<Item = &'b str> + 'b {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| &**v)
    }

    /// `name` as a boolean (`true`/`1` and `false`/`0`); absent is `false`.
    pub fn flag(&self, name: &str) -> Result<bool, Status> {
        match self.get(name) {
            None | Some("") | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") => Ok(true),
            Some(v) => Err(Status::bad_request(format!(
                "invalid value for {name}: {v:?} is not a boolean"
            ))),
        }
    }

    /// `name` as an unsigned integer, if present.
    pub fn number(&self, name: &str) -> Result<Option<u64>, Status> {
        match self.get(name) {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                Status::bad_request(format!(
                    "invalid value for {name}: {v:?} is not a non-negative integer"
                ))
            }),
        }
    }
}

/// Parses a resourceVersion string as this project's versions are (decimal integers).
pub fn parse_resource_version(rv: &str) -> Result<u64, Status> {
    rv.parse()
        .map_err(|_| Status::bad_request(format!("invalid resource version {rv:?}")))
}

impl ListOptions {
    /// Reads and validates the options from a query string.
    pub fn from_query(q: &Query<'_>) -> Result<ListOptions, Status> {
        let watch = q.flag("watch")?;
        let rv = q.get("resourceVersion").filter(|v| !v.is_empty());
        let rv_match = match q.get("resourceVersionMatch").filter(|v| !v.is_empty()) {
            None => None,
            Some("NotOlderThan") => Some(VersionMatch::NotOlderThan),
            Some("Exact") => Some(VersionMatch::Exact),
            Some(other) => {
                return Err(Status::invalid(
                    "",
                    "ListOptions",
                    "",
                    "resourceVersionMatch",
                    &format!(
                    "Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
                ),
                ))
            }
        };
        let continue_token = q
            .get("continue")
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        let send_initial_events = q.flag("sendInitialEvents")?;
        let version = match (rv, rv_match) {
            (None, None) => Version::MostRecent,
            // A watch-list (client-go's streaming list) asks for the most recent data this way.
            (None, Some(VersionMatch::NotOlderThan)) if send_initial_events => Version::MostRecent,
            (None, Some(_)) => return Err(Status::invalid(
                "",
                "ListOptions",
                "",
                "resourceVersionMatch",
                "Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
            )),
            (Some("0"), None) => Version::Any,
            (Some(v), m) => {
                let n = parse_resource_version(v)?;
                if m == Some(VersionMatch::Exact) && n == 0 {
                    return Err(Status::invalid(
                        "",
                        "ListOptions",
                        "",
                        "resourceVersionMatch",
                        "Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                    ));
                }
                if n == 0 {
                    Version::Any
                } else {
                    Version::At(n, m.unwrap_or(VersionMatch::NotOlderThan))
                }
            }
        };
        if continue_token.is_some() && rv.is_some_and(|v| v != "0") && !watch {
            return Err(Status::invalid(
                "",
                "ListOptions",
                "",
                "resourceVersion",
                "Forbidden: specifying resource version is not allowed when using continue",
            ));
        }
        if send_initial_events
            && (!watch
                || rv_match != Some(VersionMatch::NotOlderThan)
                || !q.flag("allowWatchBookmarks")?)
        {
            return Err(Status::invalid(
                "",
                "ListOptions",
                "",
                "sendInitialEvents",
                "Forbidden: sendInitialEvents requires watch=true, resourceVersionMatch=NotOlderThan and allowWatchBookmarks=true",
            ));
        }
        let include_object = match q.get("includeObject") {
            None | Some("") | Some("Metadata") => IncludeObject::Metadata,
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            Some(v) => {
                return Err(Status::bad_request(format!(
                    "invalid includeObject {v:?}: must be None, Metadata or Object"
                )))
            }
        };
        Ok(ListOptions {
            label_selector: q
                .get("labelSelector")
                .filter(|v| !v.is_empty())
                .map(str::to_owned),
            field_selector: q
                .get("fieldSelector")
                .filter(|v| !v.is_empty())
                .map(str::to_owned),
            limit: q.number("limit")?.filter(|&n| n > 0),
            continue_token,
            version,
            watch,
            allow_bookmarks: q.flag("allowWatchBookmarks")?,
            timeout_seconds: q.number("timeoutSeconds")?,
            send_initial_events,
            include_object,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(q: &str) -> Result<ListOptions, Status> {
        ListOptions::from_query(&Query::parse(q))
    }

    #[test]
    fn versions() {
        assert_eq!(opts("").unwrap().version, Version::MostRecent);
        assert_eq!(opts("resourceVersion=0").unwrap().version, Version::Any);
        assert_eq!(
            opts("resourceVersion=12").unwrap().version,
            Version::At(12, VersionMatch::NotOlderThan)
        );
        assert_eq!(
            opts("resourceVersion=12&resourceVersionMatch=Exact")
                .unwrap()
                .version,
            Version::At(12, VersionMatch::Exact)
        );
        assert_eq!(opts("resourceVersionMatch=Exact").unwrap_err().code, 422);
        assert_eq!(opts("resourceVersion=abc").unwrap_err().code, 400);
        assert_eq!(
            opts("resourceVersion=1&resourceVersionMatch=Sometimes")
                .unwrap_err()
                .code,
            422
        );
    }

    #[test]
    fn kube_rs_style_queries() {
        let o = opts("&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=7")
            .unwrap();
        assert!(o.watch && o.allow_bookmarks);
        assert_eq!(o.timeout_seconds, Some(290));
        assert_eq!(o.version, Version::At(7, VersionMatch::NotOlderThan));
        let o = opts("labelSelector=app%3Dweb%2Ctier+in+%28a%2Cb%29&limit=500").unwrap();
        assert_eq!(o.label_selector.as_deref(), Some("app=web,tier in (a,b)"));
        assert_eq!(o.limit, Some(500));
    }

    #[test]
    fn bad_values_are_400() {
        assert_eq!(opts("limit=x").unwrap_err().code, 400);
        assert_eq!(opts("watch=maybe").unwrap_err().code, 400);
        assert_eq!(opts("includeObject=All").unwrap_err().code, 400);
        assert_eq!(
            opts("continue=abc&resourceVersion=5").unwrap_err().code,
            422
        );
        assert_eq!(
            opts("sendInitialEvents=true&watch=true").unwrap_err().code,
            422
        );
        assert!(opts("sendInitialEvents=true&watch=true&resourceVersion=0&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true").is_ok());
    }
}
