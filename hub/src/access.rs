//! `access`: where the hub's access decisions come from.
//!
//! Every request is authenticated and authorized against one in-memory
//! [`kubehub_access::Index`] shared by all cores (lock-free reads, see the access crate). It is
//! fed from exactly one source, chosen in hub.toml:
//!
//! * `[access] file`: a static snapshot read once at start ([`Access::from_file`]), for
//!   development and tests;
//! * `[meta]`: the metaserver's sync feed, kept current by [`sync`] on a thread of its own,
//!   which also registers the hub with meta.
//!
//! [`Access`] holds the index and what `/readyz` and `/metrics` say about the source: the hub
//! is ready once a first snapshot is applied, and a hub that loses meta keeps serving with
//! what it has (readiness says since when).

pub mod sync;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kubehub_access::{Index, Line};
use tracing::warn;

use crate::metrics::Metrics;

/// Why the access file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The file could not be read.
    #[error("reading access file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not a sync line.
    #[error("access file {path}, line {line}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Why.
        source: serde_json::Error,
    },
    /// Records in it do not validate.
    #[error("access file {path}, line {line}: {source}")]
    Records {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What was refused.
        source: kubehub_access::ApplyError,
    },
    /// The file has no lines.
    #[error("access file {0} is empty")]
    Empty(PathBuf),
}

/// Where the access data comes from.
#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    Meta(String),
}

/// The access index and the state of its source.
#[derive(Debug)]
pub struct Access {
    /// Who is who, and who may do what.
    pub index: Index,
    source: Source,
    /// A snapshot was applied: requests can be decided.
    ready: AtomicBool,
    /// The sync feed is open (meta only).
    connected: AtomicBool,
    /// Unix milliseconds of the last line from meta (0: never).
    last_contact_ms: AtomicU64,
    /// Unix milliseconds since which meta is not connected.
    disconnected_since_ms: AtomicU64,
    /// Cut from meta longer than this: not current ([`Access::is_current`]).
    unready_after: Option<Duration>,
    /// Bumped by every applied line that changes records (not heartbeats): what each core's
    /// [`crate::bans::sweeper`] waits on.
    changes: tokio::sync::watch::Sender<u64>,
}

/// Now, in Unix milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Now, in Unix seconds (what token expiry is compared with).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Access {
    fn new(source: Source) -> Access {
        Access {
            index: Index::new(),
            source,
            ready: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            last_contact_ms: AtomicU64::new(0),
            disconnected_since_ms: AtomicU64::new(unix_ms()),
            unready_after: None,
            changes: tokio::sync::watch::Sender::new(0),
        }
    }

    /// A receiver that sees every change of the records (not heartbeats).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// An index to be fed by meta's sync feed at `url` (not ready until its first snapshot;
    /// not ready again once cut from meta for longer than `unready_after`, if given).
    pub fn for_meta(url: &str, unready_after: Option<Duration>) -> Access {
        Access {
            unready_after,
            ..Access::new(Source::Meta(url.to_owned()))
        }
    }

    /// An index holding `lines` (a static source, as [`Access::from_file`] reads one; for
    /// tests and embedding).
    pub fn from_lines(lines: &[Line]) -> Result<Access, kubehub_access::ApplyError> {
        let a = Access::new(Source::File(PathBuf::from("(memory)")));
        for line in lines {
            a.index.apply(line)?;
        }
        a.ready.store(true, Ordering::Release);
        Ok(a)
    }

    /// Reads a static snapshot: one JSON sync line (a `snapshot`, possibly pretty-printed), or
    /// NDJSON sync lines applied in order. Every record must validate.
    pub fn from_file(path: &Path) -> Result<Access, AccessError> {
        let text = std::fs::read_to_string(path).map_err(|source| AccessError::Read {
            path: path.to_owned(),
            source,
        })?;
        let lines: Vec<(usize, Line)> = match serde_json::from_str::<Line>(&text) {
            Ok(line) => vec![(1, line)],
            Err(_) => text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| {
                    Line::parse(l.as_bytes())
                        .map(|line| (i + 1, line))
                        .map_err(|source| AccessError::Parse {
                            path: path.to_owned(),
                            line: i + 1,
                            source,
                        })
                })
                .collect::<Result<_, _>>()?,
        };
        if lines.is_empty() {
            return Err(AccessError::Empty(path.to_owned()));
        }
        let a = Access::new(Source::File(path.to_owned()));
        for (n, line) in &lines {
            a.index.apply(line).map_err(|source| AccessError::Records {
                path: path.to_owned(),
                line: *n,
                source,
            })?;
        }
        a.ready.store(true, Ordering::Release);
        Ok(a)
    }

    /// Whether requests can be decided (a snapshot was applied).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Whether the hub should take new users: requests can be decided, and it is not cut from
    /// meta for longer than `[meta] unready_after_ms` (a partitioned hub keeps serving what
    /// it has, but its access data and directory age: users are better served elsewhere).
    pub fn is_current(&self) -> bool {
        self.is_ready()
            && self
                .unready_after
                .is_none_or(|limit| self.disconnected_for() <= limit)
    }

    /// Whether meta's feed is open now (a file source: always `true`).
    pub fn is_connected(&self) -> bool {
        matches!(self.source, Source::File(_)) || self.connected.load(Ordering::Acquire)
    }

    /// Applies a line from meta (logging records it refused: those keys grant nothing).
    pub fn apply(&self, line: &Line) {
        if let Err(e) = self.index.apply(line) {
            warn!(revision = line.revision(), "access records refused: {e}");
        }
        self.last_contact_ms.store(unix_ms(), Ordering::Release);
        if matches!(line, Line::Snapshot { .. }) {
            self.ready.store(true, Ordering::Release);
        }
        if !matches!(line, Line::Heartbeat { .. }) {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// The sync feed opened or closed.
    pub fn set_connected(&self, connected: bool) {
        let was = self.connected.swap(connected, Ordering::AcqRel);
        if was && !connected {
            self.disconnected_since_ms
                .store(unix_ms(), Ordering::Release);
        }
        if connected {
            self.last_contact_ms.store(unix_ms(), Ordering::Release);
        }
    }

    /// How long meta has been disconnected (zero while connected, or for a file source).
    pub fn disconnected_for(&self) -> Duration {
        if self.is_connected() {
            return Duration::ZERO;
        }
        let since = self.disconnected_since_ms.load(Ordering::Acquire);
        Duration::from_millis(unix_ms().saturating_sub(since))
    }

    /// Unix milliseconds of the last line from meta (0: never).
    pub fn last_contact_ms(&self) -> u64 {
        self.last_contact_ms.load(Ordering::Acquire)
    }

    /// The `/readyz` line about access: where the data comes from and how current it is.
    pub fn readiness(&self) -> String {
        let revision = self.index.revision();
        match &self.source {
            Source::File(path) => format!(
                "access: static file {} (revision {revision})",
                path.display()
            ),
            Source::Meta(url) => {
                let secs = self.disconnected_for().as_secs();
                if self.is_connected() {
                    format!("meta: connected (revision {revision})")
                } else if self.is_ready() {
                    format!("meta: disconnected for {secs}s, serving with revision {revision}")
                } else {
                    format!("meta: not connected to {url} yet (for {secs}s): no access data")
                }
            }
        }
    }

    /// Sets the access gauges (at scrape time).
    pub fn update_gauges(&self, metrics: &Metrics) {
        metrics.access_revision.set(self.index.revision());
        metrics.meta_connected.set(i64::from(self.is_connected()));
        metrics
            .meta_last_contact
            .set(self.last_contact_ms() as f64 / 1000.0);
        metrics
            .meta_disconnected
            .set(self.disconnected_for().as_secs_f64());
    }
}

/// Writes a development access file (what `[access] file` reads): tenant `dev` owning
/// `clusters`, `user` with every right on them, and a new token for the user bound to them.
/// Returns the token (shown once: only its hash is in the file).
pub fn write_dev_file(path: &Path, user: &str, clusters: &[String]) -> std::io::Result<String> {
    use kubehub_access::build;
    let ids: Vec<&str> = clusters.iter().map(String::as_str).collect();
    let (token, token_record) = build::mint(user, "dev", &ids, 0);
    let mut records = vec![
        build::tenant("dev"),
        build::user(user, "dev", &[]),
        build::grant("everything", "dev", user, &ids, build::everything()),
        token_record,
    ];
    records.extend(ids.iter().map(|c| build::cluster(c, "dev")));
    for r in &records {
        r.validate().map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{}: {e}", r.key()),
            )
        })?;
    }
    let line = Line::Snapshot {
        revision: 1,
        records,
    };
    std::fs::write(path, line.to_line())?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubehub_access::{Record, Tenant};

    fn snapshot(revision: i64) -> Line {
        Line::Snapshot {
            revision,
            records: vec![Record::Tenant(Tenant {
                name: "acme".into(),
                display_name: String::new(),
            })],
        }
    }

    #[test]
    fn a_file_is_one_snapshot_or_ndjson_lines() {
        let dir = tempfile::tempdir().unwrap();
        let one = dir.path().join("one.json");
        let pretty = serde_json::to_string_pretty(&snapshot(7)).unwrap();
        std::fs::write(&one, pretty).unwrap();
        let a = Access::from_file(&one).unwrap();
        assert!(a.is_ready() && a.is_connected());
        assert_eq!(a.index.revision(), 7);
        assert!(a.readiness().contains("(revision 7)"), "{}", a.readiness());

        let nd = dir.path().join("lines.ndjson");
        let text = snapshot(7).to_line() + "\n" + &Line::Heartbeat { revision: 9 }.to_line();
        std::fs::write(&nd, text).unwrap();
        assert_eq!(Access::from_file(&nd).unwrap().index.revision(), 9);

        std::fs::write(&nd, "{\"type\":\"snapshot\"}\n").unwrap();
        let e = Access::from_file(&nd).unwrap_err().to_string();
        assert!(e.contains("lines.ndjson, line 1"), "{e}");
        std::fs::write(&nd, "\n").unwrap();
        assert!(matches!(Access::from_file(&nd), Err(AccessError::Empty(_))));
        let bad = Line::Snapshot {
            revision: 1,
            records: vec![Record::Tenant(Tenant {
                name: "Not A Label".into(),
                display_name: String::new(),
            })],
        };
        std::fs::write(&nd, bad.to_line()).unwrap();
        let e = Access::from_file(&nd).unwrap_err().to_string();
        assert!(e.contains("refused"), "{e}");
    }

    #[test]
    fn a_dev_file_lets_its_user_in() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.json");
        let token = write_dev_file(&path, "admin", &["demo".into()]).unwrap();
        let a = Access::from_file(&path).unwrap();
        let who = a
            .index
            .authenticate(Some(format!("Bearer {token}").as_bytes()), unix_now())
            .unwrap();
        assert_eq!(
            (who.user.as_str(), &*who.clusters),
            ("admin", &["demo".to_owned()][..])
        );
        let info =
            kubehub_kapi::request_info::request_info("DELETE", "/api/v1/namespaces/a/pods/b", "")
                .unwrap();
        let attrs = kubehub_access::Attributes::from(&info);
        assert!(a.index.authorize(&who, "demo", &attrs).is_allowed());
        assert!(write_dev_file(&path, "Not A User", &[]).is_err());
    }

    #[test]
    fn meta_readiness_says_how_current_the_data_is() {
        let a = Access::for_meta("https://meta:7443", Some(Duration::from_millis(200)));
        assert!(!a.is_ready() && !a.is_current());
        assert!(a.readiness().contains("not connected"), "{}", a.readiness());
        a.set_connected(true);
        a.apply(&snapshot(3));
        assert!(a.is_ready() && a.is_current());
        assert_eq!(a.readiness(), "meta: connected (revision 3)");
        a.set_connected(false);
        assert_eq!(
            a.readiness(),
            "meta: disconnected for 0s, serving with revision 3"
        );
        // Cut off briefly: still current; beyond the limit: serving, but not current.
        assert!(a.is_current());
        std::thread::sleep(Duration::from_millis(300));
        assert!(a.is_ready() && !a.is_current());
        a.set_connected(true);
        assert!(a.is_current(), "current again once meta is back");
        // Without a limit a hub cut from meta stays current.
        let b = Access::for_meta("https://meta:7443", None);
        b.apply(&snapshot(1));
        b.set_connected(false);
        std::thread::sleep(Duration::from_millis(20));
        assert!(b.is_current());
    }
}
