//! The `host` plugin: `GET /plugins/host` answers the edge host's facts as JSON (`HostFacts`),
//! read when asked (`sysinfo`, and `/etc/os-release` for the OS):
//!
//! ```json
//! {"kind": "HostFacts", "apiVersion": "plugins.kubehub.io/v1",
//!  "hostname": "edge-7", "architecture": "x86_64",
//!  "os": {"id": "debian", "name": "Debian GNU/Linux", "version": "12",
//!         "prettyName": "Debian GNU/Linux 12 (bookworm)"},
//!  "kernel": {"name": "Linux", "release": "6.1.0-18-amd64"},
//!  "cpu": {"model": "Intel(R) Xeon(R) …", "count": 4, "physicalCores": 2},
//!  "memory": {"totalBytes": 8234567680, "availableBytes": 5234567680,
//!             "swapTotalBytes": 0, "swapFreeBytes": 0},
//!  "disks": [{"device": "/dev/vda1", "mountPoint": "/", "fileSystem": "ext4",
//!             "totalBytes": 107374182400, "availableBytes": 53687091200,
//!             "removable": false, "readOnly": false}],
//!  "networkInterfaces": [{"name": "eth0", "mac": "52:54:00:12:34:56",
//!                         "addresses": ["10.0.0.7/24", "fe80::5054:ff:fe12:3456/64"]}],
//!  "uptimeSeconds": 86400, "bootTime": "2026-01-01T00:00:00Z"}
//! ```
//!
//! Run inside a container, these are what the container sees (its hostname, interfaces and
//! mounts; the host's kernel, CPUs and memory).

use std::time::{Duration, UNIX_EPOCH};

use http::{Method, Request};
use kubehub_kapi::Status;
use serde_json::{json, Value};

use super::{json_response, route, status_response, Plugin, PluginFuture, Route};
use crate::upstream::UpBody;

/// The plugin's name.
pub const NAME: &str = "host";

/// The `host` plugin.
#[derive(Debug, Clone, Copy)]
pub struct Host;

impl Plugin for Host {
    fn name(&self) -> &'static str {
        NAME
    }

    fn call(&self, request: Request<UpBody>) -> PluginFuture {
        Box::pin(async move {
            let whole = matches!(route(request.uri().path()), Route::Plugin(_, s) if s.is_empty());
            if !whole {
                return Ok(status_response(&Status::no_such_resource()));
            }
            if request.method() != Method::GET && request.method() != Method::HEAD {
                return Ok(status_response(&Status::method_not_allowed()));
            }
            // sysinfo reads /proc and /sys: blocking IO, off the runtime's threads.
            let facts = tokio::task::spawn_blocking(facts)
                .await
                .map_err(|e| format!("reading the host's facts: {e}"))?;
            Ok(json_response(
                200,
                serde_json::to_vec(&facts).unwrap_or_default(),
            ))
        })
    }
}

/// The fields of an os-release file (`KEY=value`, values optionally quoted).
pub fn parse_os_release(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let unquoted = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            let mut out = String::with_capacity(unquoted.len());
            let mut chars = unquoted.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        out.push(n);
                    }
                } else {
                    out.push(c);
                }
            }
            (k.trim().to_owned(), out)
        })
        .collect()
}

fn os() -> Value {
    let text = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_default();
    let fields = parse_os_release(&text);
    let get = |k: &str| {
        fields
            .iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    json!({
        "id": get("ID").unwrap_or_else(sysinfo::System::distribution_id),
        "name": get("NAME").or_else(sysinfo::System::name),
        "version": get("VERSION_ID").or_else(sysinfo::System::os_version),
        "prettyName": get("PRETTY_NAME").or_else(sysinfo::System::long_os_version),
    })
}

/// The host's facts now.
pub fn facts() -> Value {
    use sysinfo::{CpuRefreshKind, Disks, MemoryRefreshKind, Networks, RefreshKind, System};
    let sys = System::new_with_specifics(
        RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing())
            .with_memory(MemoryRefreshKind::everything()),
    );
    let model = sys.cpus().first().map(|c| c.brand().trim().to_owned());
    let disks: Vec<Value> = Disks::new_with_refreshed_list()
        .iter()
        .map(|d| {
            json!({
                "device": d.name().to_string_lossy(),
                "mountPoint": d.mount_point().to_string_lossy(),
                "fileSystem": d.file_system().to_string_lossy(),
                "totalBytes": d.total_space(),
                "availableBytes": d.available_space(),
                "removable": d.is_removable(),
                "readOnly": d.is_read_only(),
            })
        })
        .collect();
    let networks = Networks::new_with_refreshed_list();
    let mut interfaces: Vec<Value> = networks
        .iter()
        .map(|(name, n)| {
            let addresses: Vec<String> = n
                .ip_networks()
                .iter()
                .map(|a| format!("{}/{}", a.addr, a.prefix))
                .collect();
            json!({
                "name": name,
                "mac": n.mac_address().to_string(),
                "addresses": addresses,
            })
        })
        .collect();
    interfaces.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let boot = UNIX_EPOCH + Duration::from_secs(System::boot_time());
    json!({
        "kind": "HostFacts",
        "apiVersion": super::API_VERSION,
        "hostname": System::host_name(),
        "architecture": System::cpu_arch(),
        "os": os(),
        "kernel": {
            "name": std::env::consts::OS,
            "release": System::kernel_version(),
        },
        "cpu": {
            "model": model,
            "count": sys.cpus().len(),
            "physicalCores": System::physical_core_count(),
        },
        "memory": {
            "totalBytes": sys.total_memory(),
            "availableBytes": sys.available_memory(),
            "swapTotalBytes": sys.total_swap(),
            "swapFreeBytes": sys.free_swap(),
        },
        "disks": disks,
        "networkInterfaces": interfaces,
        "uptimeSeconds": System::uptime(),
        "bootTime": kubehub_kapi::time::rfc3339(boot),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn os_release_values_are_unquoted() {
        let f = parse_os_release(
            "# comment\nNAME=\"Debian GNU/Linux\"\nID=debian\nVERSION_ID='12'\nPRETTY_NAME=\"A \\\"quoted\\\" name\"\n\n",
        );
        assert_eq!(
            f,
            [
                ("NAME".into(), "Debian GNU/Linux".into()),
                ("ID".into(), "debian".into()),
                ("VERSION_ID".into(), "12".into()),
                ("PRETTY_NAME".into(), "A \"quoted\" name".into()),
            ]
        );
    }

    #[tokio::test]
    async fn the_facts_describe_this_host() {
        let req = |method: &str, path: &str| {
            Request::builder()
                .method(method)
                .uri(path)
                .body(
                    http_body_util::Empty::new()
                        .map_err(|e: std::convert::Infallible| match e {})
                        .boxed(),
                )
                .unwrap()
        };
        let r = Host.call(req("GET", "/plugins/host")).await.unwrap();
        assert_eq!(r.status(), 200);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["kind"], "HostFacts");
        assert!(!v["architecture"].as_str().unwrap().is_empty());
        assert_eq!(v["kernel"]["name"], "linux");
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        assert_eq!(v["kernel"]["release"], release.trim());
        assert!(v["cpu"]["count"].as_u64().unwrap() >= 1);
        assert!(v["memory"]["totalBytes"].as_u64().unwrap() > 0);
        assert!(v["uptimeSeconds"].as_u64().unwrap() > 0);
        assert!(v["networkInterfaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "lo"));
        assert!(v["disks"].is_array());
        assert!(v["os"]["id"].is_string());
        assert_eq!(
            Host.call(req("POST", "/plugins/host"))
                .await
                .unwrap()
                .status(),
            405
        );
        assert_eq!(
            Host.call(req("GET", "/plugins/host/cpu"))
                .await
                .unwrap()
                .status(),
            404
        );
    }
}
