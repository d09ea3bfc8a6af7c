//! Agent plugins as the hub and the agent both read their paths: `/plugins/<name>[/<object>]`
//! after the cluster prefix. The agent sends such a request to its plugin `<name>` instead of
//! the edge API server; the hub authorizes it as a resource request of API group
//! [`API_GROUP`], version [`VERSION`], cluster-scoped, resource `<name>`, name `<object>`
//! (a segment after it is the subresource):
//!
//! ```text
//! GET    /plugins/native               list    native
//! GET    /plugins/native/uptime        get     native, name uptime
//! POST   /plugins/native/uptime        create  native, name uptime
//! GET    /plugins/host                 get     host   (a singleton: the plugin is the object)
//! GET    /plugins/native/uptime/x      get     native/x, name uptime
//! ```
//!
//! Both sides read the same *decoded* path ([`crate::decode_path`]) with the same function
//! ([`split`]), so whatever the hub authorized as a plugin is what the agent runs, and
//! nothing reaches a plugin that the hub read as anything else.

use std::borrow::Cow;

use crate::request_info::{RequestInfo, Verb};

/// The API group of plugin requests.
pub const API_GROUP: &str = "plugins.kubehub.io";
/// Their version.
pub const VERSION: &str = "v1";
/// Plugins whose path `/plugins/<name>` is the one object they serve (read with `get`).
pub const SINGLETONS: [&str; 1] = ["host"];

/// A decoded path (without the query) under `/plugins/`: the plugin's name and what follows
/// it (without the leading `/`; trailing slashes removed). `None`: not a plugin path (the
/// name is empty).
pub fn split(decoded_path: &str) -> Option<(&str, &str)> {
    let rest = decoded_path
        .strip_prefix("/plugins/")?
        .trim_end_matches('/');
    let (name, tail) = rest.split_once('/').unwrap_or((rest, ""));
    (!name.is_empty()).then_some((name, tail))
}

/// What a plugin request asks, for authorization: `None` if `decoded_path` is not under
/// `/plugins/<name>` (see the module documentation).
pub fn request_info<'a>(method: &str, decoded_path: &'a str) -> Option<RequestInfo<'a>> {
    let (name, tail) = split(decoded_path)?;
    let (object, sub) = tail.split_once('/').unwrap_or((tail, ""));
    let subresource = sub.split('/').next().unwrap_or("");
    // `{name}/{object}/{subresource}/…`, as kube-apiserver's `Parts`.
    let parts = decoded_path
        .strip_prefix("/plugins/")
        .unwrap_or_default()
        .trim_end_matches('/');
    let verb = match method {
        "GET" | "HEAD" if object.is_empty() && !SINGLETONS.contains(&name) => Verb::List,
        "GET" | "HEAD" => Verb::Get,
        "POST" => Verb::Create,
        "PUT" => Verb::Update,
        "PATCH" => Verb::Patch,
        "DELETE" if object.is_empty() => Verb::DeleteCollection,
        "DELETE" => Verb::Delete,
        _ => Verb::Unknown,
    };
    Some(RequestInfo {
        is_resource_request: true,
        path: decoded_path,
        verb,
        api_prefix: "plugins",
        api_group: API_GROUP,
        api_version: VERSION,
        namespace: "",
        resource: name,
        subresource,
        name: Cow::Borrowed(object),
        parts,
        field_selector: Cow::Borrowed(""),
        label_selector: Cow::Borrowed(""),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_paths_split_into_name_and_rest() {
        assert_eq!(split("/plugins/native"), Some(("native", "")));
        assert_eq!(split("/plugins/native/"), Some(("native", "")));
        assert_eq!(split("/plugins/native/uptime"), Some(("native", "uptime")));
        assert_eq!(split("/plugins/native/a/b/"), Some(("native", "a/b")));
        assert_eq!(split("/plugins/"), None);
        assert_eq!(split("/plugins"), None);
        assert_eq!(split("/plugins//x"), None);
        assert_eq!(split("/api/v1/plugins/x"), None);
        assert_eq!(split("//plugins/x"), None);
    }

    #[test]
    fn plugin_requests_are_cluster_scoped_resources_of_their_group() {
        let info = |m: &str, p: &'static str| request_info(m, p).unwrap();
        let i = info("POST", "/plugins/native/uptime");
        assert!(i.is_resource_request);
        assert_eq!(
            (
                i.verb.as_str(),
                i.api_group,
                i.api_version,
                i.resource,
                &*i.name,
                i.subresource,
                i.namespace,
                i.parts
            ),
            (
                "create",
                "plugins.kubehub.io",
                "v1",
                "native",
                "uptime",
                "",
                "",
                "native/uptime"
            )
        );
        let verbs = [
            ("GET", "/plugins/native", "list", ""),
            ("HEAD", "/plugins/native/", "list", ""),
            ("GET", "/plugins/native/uptime", "get", "uptime"),
            ("GET", "/plugins/host", "get", ""),
            ("POST", "/plugins/host", "create", ""),
            ("PUT", "/plugins/native/uptime", "update", "uptime"),
            ("PATCH", "/plugins/native/uptime", "patch", "uptime"),
            ("DELETE", "/plugins/native/uptime", "delete", "uptime"),
            ("DELETE", "/plugins/native", "deletecollection", ""),
            ("OPTIONS", "/plugins/native", "", ""),
            ("get", "/plugins/native", "", ""),
        ];
        for (method, path, verb, name) in verbs {
            let i = info(method, path);
            assert_eq!((i.verb.as_str(), &*i.name), (verb, name), "{method} {path}");
        }
        let i = info("GET", "/plugins/native/uptime/logs/x/");
        assert_eq!(
            (i.resource, &*i.name, i.subresource, i.parts),
            ("native", "uptime", "logs", "native/uptime/logs/x")
        );
        assert!(request_info("GET", "/plugins/").is_none());
        assert!(request_info("GET", "/apis/plugins.kubehub.io/v1/native").is_none());
    }
}
