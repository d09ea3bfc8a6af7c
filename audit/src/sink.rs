//! Where audit events go: a dedicated writer thread behind a bounded queue.
//!
//! [`Sink::send`] never blocks: it tries to enqueue and, when the queue is full (the file
//! system is slow, stdout is a pipe nobody drains), drops the event and counts it
//! (`kubehub_audit_events_dropped_total`). The writer serializes each event as one JSON
//! line, buffers, and flushes whenever the queue runs empty, so an idle sink has written
//! everything. A file sink is rotated by size: `audit.log` → `audit.log.1` → … →
//! `audit.log.<max_backups>`, the oldest deleted.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};

use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;

use crate::event::Event;
use crate::AuditConfig;

/// Where events are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// A file, rotated by size.
    #[default]
    File,
    /// Standard output, one JSON line per event.
    Stdout,
}

/// Why the sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The configuration is invalid.
    #[error("{0}")]
    Config(String),
    /// The writer thread could not be started.
    #[error("audit writer thread: {0}")]
    Thread(io::Error),
}

/// The counters of a sink (register them with the owner's metrics:
/// `kubehub_audit_events_total`, `kubehub_audit_events_dropped_total`).
#[derive(Debug, Clone, Default)]
pub struct SinkCounters {
    /// Events written.
    pub written: Counter,
    /// Events dropped because the queue was full.
    pub dropped: Counter,
}

/// The sending side of the audit log (clone it freely; every clone feeds the one writer).
#[derive(Debug, Clone)]
pub struct Sink {
    tx: SyncSender<Event>,
    counters: SinkCounters,
}

impl Sink {
    /// Starts the writer thread for `cfg` (which must be enabled and valid).
    pub fn start(cfg: &AuditConfig, counters: SinkCounters) -> Result<Sink, AuditError> {
        cfg.validate().map_err(AuditError::Config)?;
        let out = match (cfg.sink, &cfg.path) {
            (SinkKind::Stdout, _) => Output::Stdout,
            (SinkKind::File, Some(path))
                if !path
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .is_none_or(Path::is_dir) =>
            {
                return Err(AuditError::Config(format!(
                    "audit.path {}: its directory does not exist",
                    path.display()
                )))
            }
            (SinkKind::File, Some(path)) => Output::File(Rotating {
                path: path.clone(),
                max_bytes: cfg.max_size_mb.saturating_mul(1024 * 1024),
                max_backups: cfg.max_backups,
                file: None,
                size: 0,
            }),
            (SinkKind::File, None) => {
                return Err(AuditError::Config(
                    "audit.path is required with audit.sink = \"file\"".into(),
                ))
            }
        };
        Self::spawn(out, cfg.queue, counters)
    }

    /// A sink writing to `w` (tests: a writer that blocks shows what a slow sink does).
    pub fn with_writer(
        w: Box<dyn Write + Send>,
        queue: usize,
        counters: SinkCounters,
    ) -> Result<Sink, AuditError> {
        Self::spawn(Output::Writer(BufWriter::new(w)), queue, counters)
    }

    fn spawn(out: Output, queue: usize, counters: SinkCounters) -> Result<Sink, AuditError> {
        let (tx, rx) = mpsc::sync_channel(queue.max(1));
        let c = counters.clone();
        std::thread::Builder::new()
            .name("kubehub-audit".into())
            .spawn(move || write_loop(rx, out, c))
            .map_err(AuditError::Thread)?;
        Ok(Sink { tx, counters })
    }

    /// Queues an event; if the queue is full it is dropped and counted. Never blocks.
    pub fn send(&self, e: Event) {
        match self.tx.try_send(e) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters.dropped.inc();
            }
        }
    }

    /// The sink's counters.
    pub fn counters(&self) -> &SinkCounters {
        &self.counters
    }
}

enum Output {
    Stdout,
    File(Rotating),
    Writer(BufWriter<Box<dyn Write + Send>>),
}

fn write_loop(rx: Receiver<Event>, mut out: Output, c: SinkCounters) {
    let mut stdout = BufWriter::new(io::stdout());
    let mut failing = false;
    let mut next = rx.recv().ok();
    while let Some(e) = next {
        let line = e.to_line();
        let res = match &mut out {
            Output::Stdout => stdout.write_all(&line),
            Output::File(f) => f.write(&line),
            Output::Writer(w) => w.write_all(&line),
        };
        match res {
            Ok(()) => {
                c.written.inc();
                failing = false;
            }
            Err(err) => {
                c.dropped.inc();
                if !failing {
                    tracing::error!("audit log: cannot write: {err}");
                    failing = true;
                }
            }
        }
        next = match rx.try_recv() {
            Ok(e) => Some(e),
            Err(_) => {
                // Caught up: what was written reaches the file now.
                let _ = match &mut out {
                    Output::Stdout => stdout.flush(),
                    Output::File(f) => f.flush(),
                    Output::Writer(w) => w.flush(),
                };
                rx.recv().ok()
            }
        };
    }
    let _ = stdout.flush();
    if let Output::File(f) = &mut out {
        let _ = f.flush();
    }
}

/// A file rotated by size.
struct Rotating {
    path: PathBuf,
    max_bytes: u64,
    max_backups: usize,
    file: Option<BufWriter<File>>,
    size: u64,
}

impl Rotating {
    fn open(&mut self) -> io::Result<&mut BufWriter<File>> {
        if self.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
            self.file = Some(BufWriter::with_capacity(64 * 1024, f));
        }
        match self.file.as_mut() {
            Some(f) => Ok(f),
            None => Err(io::Error::other("audit log not open")),
        }
    }

    fn write(&mut self, line: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        let f = self.open()?;
        f.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        if let Some(mut f) = self.file.take() {
            f.flush()?;
        }
        let backup = |i: usize| -> PathBuf { numbered(&self.path, i) };
        if self.max_backups == 0 {
            remove_if_present(&self.path)?;
        } else {
            remove_if_present(&backup(self.max_backups))?;
            for i in (1..self.max_backups).rev() {
                rename_if_present(&backup(i), &backup(i + 1))?;
            }
            rename_if_present(&self.path, &backup(1))?;
        }
        self.size = 0;
        Ok(())
    }
}

fn numbered(path: &Path, i: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

fn remove_if_present(p: &Path) -> io::Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn rename_if_present(from: &Path, to: &Path) -> io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Stage;
    use crate::policy::Level;
    use std::sync::{Arc, Barrier};
    use std::time::{Duration, Instant, SystemTime};

    fn event(i: usize) -> Event {
        let mut e = Event::new(
            Level::Metadata,
            format!("id-{i}"),
            Stage::ResponseComplete,
            SystemTime::now(),
        );
        e.request_uri = format!("/api/v1/namespaces/default/pods/{}", "p".repeat(400));
        e
    }

    fn wait_for(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn rotation_keeps_at_most_max_backups_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let cfg = AuditConfig {
            enabled: true,
            path: Some(path.clone()),
            max_size_mb: 1,
            max_backups: 2,
            ..Default::default()
        };
        let counters = SinkCounters::default();
        let sink = Sink::start(&cfg, counters.clone()).unwrap();
        // ~500 bytes each: 4 MiB is four rotations and more.
        let n = 9_000;
        for i in 0..n {
            sink.send(event(i));
            if i % 1000 == 999 {
                wait_for("the writer", || counters.written.get() == i as u64 + 1);
            }
        }
        wait_for("every event", || {
            counters.written.get() + counters.dropped.get() == n as u64
        });
        assert_eq!(counters.dropped.get(), 0, "a fast sink drops nothing");
        drop(sink);
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["audit.log", "audit.log.1", "audit.log.2"]);
        for name in &names {
            let len = std::fs::metadata(dir.path().join(name)).unwrap().len();
            assert!(
                len <= 1024 * 1024,
                "{name} is {len} bytes, above max_size_mb"
            );
        }
        // Every line of the newest old file is a whole event.
        let text = std::fs::read_to_string(dir.path().join("audit.log.1")).unwrap();
        for line in text.lines() {
            let e: Event = serde_json::from_str(line).unwrap();
            assert_eq!(e.api_version, "audit.k8s.io/v1");
        }
    }

    /// A writer that blocks until released: a sink that has fallen behind.
    struct Stuck(Arc<Barrier>);
    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.wait();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_sink_drops_and_counts_instead_of_blocking() {
        let release = Arc::new(Barrier::new(2));
        let counters = SinkCounters::default();
        // The writer buffers up to 8 KiB (~16 of these events) before its first write reaches
        // the stuck writer and blocks it; after that only the queue (8) takes events.
        let sink =
            Sink::with_writer(Box::new(Stuck(release.clone())), 8, counters.clone()).unwrap();
        for i in 0..1_000 {
            sink.send(event(i)); // must return at once every time
        }
        let (dropped, written) = (counters.dropped.get(), counters.written.get());
        assert!(
            dropped >= 1_000 - 8 - 40,
            "dropped {dropped} of 1000 with a queue of 8 ({written} buffered)"
        );
        assert!(
            dropped + written + 8 >= 1_000 - 1,
            "every event is buffered, queued or counted as dropped"
        );
        release.wait();
    }
}
