//! The state directory: where a hub or an agent keeps the key it made, the certificate the
//! metaserver signed for it and the metaserver's CA. Every file is written atomically (a
//! temporary file next to it, flushed, renamed over it); the key with mode 0600, the directory
//! with mode 0700.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use kubehub_pki::ReloadingCert;

use crate::error::state_err;
use crate::{EnrollError, Role};

/// The metaserver's CA in the state directory (of the hubs, the agents and meta itself).
pub const CA_FILE: &str = "ca.crt";

/// Where the enrolled key, certificate and CA are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateFiles {
    /// The state directory (created, mode 0700, by the first join).
    pub dir: PathBuf,
    /// The metaserver's CA.
    pub ca: PathBuf,
    /// The certificate.
    pub cert: PathBuf,
    /// Its private key (mode 0600).
    pub key: PathBuf,
}

impl StateFiles {
    /// The files of `role` in `dir`: `ca.crt`, and `agent.crt` + `agent.key` or `hub.crt` +
    /// `hub.key`.
    pub fn in_dir(dir: impl Into<PathBuf>, role: Role) -> StateFiles {
        let dir = dir.into();
        StateFiles {
            ca: dir.join(CA_FILE),
            cert: dir.join(role.cert_file()),
            key: dir.join(role.key_file()),
            dir,
        }
    }

    /// What the state directory holds: `None` when neither the certificate nor the key is
    /// there; else the certificate's description, after checking that the key is the
    /// certificate's and the CA file reads. (Expired or not: the caller decides.)
    pub fn load(&self) -> Result<Option<kubehub_pki::CertInfo>, EnrollError> {
        if !self.cert.exists() && !self.key.exists() {
            return Ok(None);
        }
        let cert_pem = read(&self.cert)?;
        let key_pem = read(&self.key)?;
        ReloadingCert::from_pem(&cert_pem, &key_pem).map_err(|e| {
            state_err(
                &self.key,
                format!("{e} (an interrupted renewal? empty the state directory and join again)"),
            )
        })?;
        kubehub_pki::load_roots(&self.ca)?;
        let info = kubehub_pki::cert_info(&cert_pem).map_err(|e| state_err(&self.cert, e))?;
        Ok(Some(info))
    }

    /// Writes a new key and its certificate: both staged first, then renamed key first, so
    /// that the window in which the two files do not match is two renames long (a start that
    /// finds them mismatched says so).
    pub fn write_key_and_cert(&self, key_pem: &str, cert_pem: &str) -> Result<(), EnrollError> {
        let key_tmp = stage(&self.key, key_pem.as_bytes(), 0o600)?;
        let cert_tmp = stage(&self.cert, cert_pem.as_bytes(), 0o644)?;
        commit(&key_tmp, &self.key)?;
        commit(&cert_tmp, &self.cert)
    }

    /// Creates the state directory (and its parents) with mode 0700.
    pub fn create_dir(&self) -> Result<(), EnrollError> {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            b.mode(0o700);
        }
        b.create(&self.dir).map_err(|e| state_err(&self.dir, e))
    }
}

/// Reads a text file, naming it in the error.
pub fn read(path: &Path) -> Result<String, EnrollError> {
    std::fs::read_to_string(path).map_err(|e| state_err(path, e))
}

/// Writes `data` to `path` atomically: a temporary file next to it (created with `mode`),
/// flushed to disk, renamed over `path`.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), EnrollError> {
    let tmp = stage(path, data, mode)?;
    commit(&tmp, path)
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// The first half of [`write_atomic`]: the temporary file, complete and on disk.
fn stage(path: &Path, data: &[u8], mode: u32) -> Result<PathBuf, EnrollError> {
    let tmp = temp_path(path);
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(&tmp).map_err(|e| state_err(&tmp, e))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(|e| state_err(&tmp, e))?;
    Ok(tmp)
}

/// The second half of [`write_atomic`]: the rename, and the directory flushed.
fn commit(tmp: &Path, path: &Path) -> Result<(), EnrollError> {
    std::fs::rename(tmp, path).map_err(|e| state_err(path, e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// `t` as RFC 3339 (UTC, seconds), for messages.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `t` as unix seconds (negative before 1970), for gauges.
pub fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_750_000_600)),
            "2025-06-15T15:16:40Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(unix_secs(UNIX_EPOCH + Duration::from_secs(5)), 5);
    }

    #[test]
    fn atomic_writes_replace_whole_files_with_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.key");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("agent.key")],
            "no temporary left"
        );
    }

    #[test]
    fn file_names_per_role() {
        let hub = StateFiles::in_dir("/s", Role::Hub);
        assert_eq!(
            (hub.ca, hub.cert, hub.key),
            ("/s/ca.crt".into(), "/s/hub.crt".into(), "/s/hub.key".into())
        );
        let agent = StateFiles::in_dir("/s", Role::Agent);
        assert_eq!(
            (agent.cert, agent.key),
            ("/s/agent.crt".into(), "/s/agent.key".into())
        );
        let dir = tempfile::tempdir().unwrap();
        let empty = StateFiles::in_dir(dir.path().join("none"), Role::Hub);
        assert!(empty.load().unwrap().is_none(), "nothing saved yet");
    }
}
