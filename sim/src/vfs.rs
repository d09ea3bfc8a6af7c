//! A container's filesystem, in memory: what `kubectl exec` and `kubectl cp` see.
//!
//! Each container of a simulated pod gets one, created on first use and kept for the pod's life
//! (files written by `tar` or a redirection persist across exec sessions). Paths are absolute,
//! normalized (`.`, `..` and repeated slashes resolved); nodes are directories, regular files
//! (shared `Bytes`) and the devices `/dev/null` and `/dev/zero`. File contents are bounded by a
//! quota per container ([`QUOTA`]); beyond it writes fail with `No space left on device`.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// Bytes of file content one container may hold.
pub const QUOTA: usize = 64 * 1024 * 1024;

/// A device file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// `/dev/null`: reads nothing, swallows writes.
    Null,
    /// `/dev/zero`: endless zero bytes.
    Zero,
}

/// A filesystem node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory.
    Dir {
        /// Permission bits.
        mode: u32,
        /// Modification time (seconds since the epoch).
        mtime: u64,
    },
    /// A regular file.
    File {
        /// Contents.
        data: Bytes,
        /// Permission bits.
        mode: u32,
        /// Modification time (seconds since the epoch).
        mtime: u64,
    },
    /// A device.
    Dev(Device),
}

impl Node {
    /// Whether it is a directory.
    pub fn is_dir(&self) -> bool {
        matches!(self, Node::Dir { .. })
    }

    /// Its size as `ls -l` shows it.
    pub fn size(&self) -> usize {
        match self {
            Node::File { data, .. } => data.len(),
            Node::Dir { .. } => 4096,
            Node::Dev(_) => 0,
        }
    }
}

/// Why a filesystem operation failed; `Display` is the `strerror` text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    /// ENOENT
    #[error("No such file or directory")]
    NotFound,
    /// EISDIR
    #[error("Is a directory")]
    IsDir,
    /// ENOTDIR
    #[error("Not a directory")]
    NotDir,
    /// EEXIST
    #[error("File exists")]
    Exists,
    /// ENOSPC
    #[error("No space left on device")]
    NoSpace,
    /// EBUSY (removing `/`)
    #[error("Device or resource busy")]
    Busy,
}

/// One container's files.
#[derive(Debug, Clone)]
pub struct Vfs {
    nodes: BTreeMap<String, Node>,
    used: usize,
    quota: usize,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `path` resolved against `cwd` (both may be relative; `cwd` defaults to `/`), normalized.
pub fn resolve(cwd: &str, path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    let joined;
    let full = if path.starts_with('/') {
        path
    } else {
        joined = format!("{cwd}/{path}");
        &joined
    };
    for seg in full.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The parent directory of a normalized path (`/` for `/`).
pub fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// The last component of a normalized path (empty for `/`).
pub fn base(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or("")
}

impl Vfs {
    /// An empty filesystem (just `/`) with the given quota.
    pub fn empty(quota: usize) -> Vfs {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            "/".to_owned(),
            Node::Dir {
                mode: 0o755,
                mtime: now(),
            },
        );
        Vfs {
            nodes,
            used: 0,
            quota,
        }
    }

    /// A container's root filesystem: the usual directories, `/dev/null`, `/dev/zero`, and
    /// `/etc` files naming the pod (`hostname`, `hosts`, `resolv.conf`, `os-release`,
    /// `passwd`), plus the service account's `namespace` file.
    pub fn for_container(pod: &str, namespace: &str, pod_ip: &str) -> Vfs {
        let mut fs = Vfs::empty(QUOTA);
        for d in [
            "/bin",
            "/dev",
            "/etc",
            "/home",
            "/proc",
            "/root",
            "/tmp",
            "/usr/bin",
            "/usr/local/bin",
            "/var/log",
            "/var/run/secrets/kubernetes.io/serviceaccount",
        ] {
            let _ = fs.mkdir(d, true);
        }
        fs.nodes.insert(
            "/tmp".into(),
            Node::Dir {
                mode: 0o1777,
                mtime: now(),
            },
        );
        fs.nodes.insert("/dev/null".into(), Node::Dev(Device::Null));
        fs.nodes.insert("/dev/zero".into(), Node::Dev(Device::Zero));
        let files = [
            ("/etc/hostname", format!("{pod}\n")),
            (
                "/etc/hosts",
                format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{pod_ip}\t{pod}\n"),
            ),
            (
                "/etc/resolv.conf",
                format!("search {namespace}.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"),
            ),
            (
                "/etc/os-release",
                "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\nHOME_URL=\"https://www.debian.org/\"\n".to_owned(),
            ),
            (
                "/etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n".to_owned(),
            ),
            (
                "/var/run/secrets/kubernetes.io/serviceaccount/namespace",
                namespace.to_owned(),
            ),
        ];
        for (path, text) in files {
            let _ = fs.write(path, Bytes::from(text), false);
        }
        fs
    }

    /// The node at a normalized path.
    pub fn stat(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// Bytes of file content held.
    pub fn used(&self) -> usize {
        self.used
    }

    fn check_parent(&self, path: &str) -> Result<(), FsError> {
        match self.nodes.get(parent(path)) {
            Some(Node::Dir { .. }) => Ok(()),
            Some(_) => Err(FsError::NotDir),
            None => Err(FsError::NotFound),
        }
    }

    /// A regular file's contents.
    pub fn read(&self, path: &str) -> Result<Bytes, FsError> {
        match self.nodes.get(path) {
            Some(Node::File { data, .. }) => Ok(data.clone()),
            Some(Node::Dir { .. }) => Err(FsError::IsDir),
            Some(Node::Dev(Device::Null)) => Ok(Bytes::new()),
            Some(Node::Dev(Device::Zero)) => Err(FsError::Busy),
            None => Err(FsError::NotFound),
        }
    }

    /// Writes (or, with `append`, extends) a regular file; writing to `/dev/null` succeeds and
    /// keeps nothing.
    pub fn write(&mut self, path: &str, data: Bytes, append: bool) -> Result<(), FsError> {
        self.write_with(path, data, append, 0o644, now())
    }

    /// [`Vfs::write`] with the mode and modification time to record (tar extraction).
    pub fn write_with(
        &mut self,
        path: &str,
        data: Bytes,
        append: bool,
        mode: u32,
        mtime: u64,
    ) -> Result<(), FsError> {
        if path == "/" {
            return Err(FsError::IsDir);
        }
        let old = match self.nodes.get(path) {
            Some(Node::Dev(_)) => return Ok(()),
            Some(Node::Dir { .. }) => return Err(FsError::IsDir),
            Some(Node::File { data, mode, .. }) => Some((data.clone(), *mode)),
            None => {
                self.check_parent(path)?;
                None
            }
        };
        let (old_len, content, mode) = match (old, append) {
            (Some((old, m)), true) => {
                let mut v = Vec::with_capacity(old.len() + data.len());
                v.extend_from_slice(&old);
                v.extend_from_slice(&data);
                (old.len(), Bytes::from(v), m)
            }
            (Some((old, m)), false) => (old.len(), data, m),
            (None, _) => (0, data, mode),
        };
        let used = self.used - old_len + content.len();
        if used > self.quota {
            return Err(FsError::NoSpace);
        }
        self.used = used;
        self.nodes.insert(
            path.to_owned(),
            Node::File {
                data: content,
                mode,
                mtime,
            },
        );
        Ok(())
    }

    /// Creates a directory (`parents`: and missing ancestors, and no error if it exists).
    pub fn mkdir(&mut self, path: &str, parents: bool) -> Result<(), FsError> {
        match self.nodes.get(path) {
            Some(Node::Dir { .. }) if parents => return Ok(()),
            Some(_) => return Err(FsError::Exists),
            None => {}
        }
        if parents && path != "/" {
            self.mkdir(parent(path), true)?;
        }
        self.check_parent(path)?;
        self.nodes.insert(
            path.to_owned(),
            Node::Dir {
                mode: 0o755,
                mtime: now(),
            },
        );
        Ok(())
    }

    /// The names and nodes directly inside a directory, sorted.
    pub fn list(&self, dir: &str) -> Result<Vec<(String, &Node)>, FsError> {
        match self.nodes.get(dir) {
            Some(Node::Dir { .. }) => {}
            Some(_) => return Err(FsError::NotDir),
            None => return Err(FsError::NotFound),
        }
        let prefix = if dir == "/" {
            "/".to_owned()
        } else {
            format!("{dir}/")
        };
        Ok(self
            .nodes
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .filter(|(p, _)| p.len() > prefix.len() && !p[prefix.len()..].contains('/'))
            .map(|(p, n)| (p[prefix.len()..].to_owned(), n))
            .collect())
    }

    /// A path and everything under it, parents before children.
    pub fn walk(&self, path: &str) -> Result<Vec<(String, &Node)>, FsError> {
        let node = self.nodes.get(path).ok_or(FsError::NotFound)?;
        let mut out = vec![(path.to_owned(), node)];
        if node.is_dir() {
            let prefix = if path == "/" {
                "/".to_owned()
            } else {
                format!("{path}/")
            };
            out.extend(
                self.nodes
                    .range(prefix.clone()..)
                    .take_while(|(p, _)| p.starts_with(&prefix))
                    .filter(|(p, _)| p.len() > prefix.len())
                    .map(|(p, n)| (p.clone(), n)),
            );
        }
        Ok(out)
    }

    /// Removes a file, or (with `recursive`) a directory and everything in it.
    pub fn remove(&mut self, path: &str, recursive: bool) -> Result<(), FsError> {
        if path == "/" {
            return Err(FsError::Busy);
        }
        let node = self.nodes.get(path).ok_or(FsError::NotFound)?;
        if node.is_dir() && !recursive {
            return Err(FsError::IsDir);
        }
        let doomed: Vec<String> = self.walk(path)?.into_iter().map(|(p, _)| p).collect();
        for p in doomed {
            if let Some(Node::File { data, .. }) = self.nodes.remove(&p) {
                self.used -= data.len();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalize() {
        assert_eq!(resolve("/", "tmp//a/./b/../c"), "/tmp/a/c");
        assert_eq!(resolve("/tmp", "x"), "/tmp/x");
        assert_eq!(resolve("/tmp", "../../.."), "/");
        assert_eq!(resolve("/tmp", "/etc/"), "/etc");
        assert_eq!(parent("/tmp/x"), "/tmp");
        assert_eq!(parent("/tmp"), "/");
        assert_eq!(base("/tmp/x"), "x");
    }

    #[test]
    fn files_directories_and_quota() {
        let mut fs = Vfs::for_container("web-0", "shop", "10.244.0.5");
        assert_eq!(&fs.read("/etc/hostname").unwrap()[..], b"web-0\n");
        assert_eq!(
            fs.write("/nope/f", Bytes::new(), false),
            Err(FsError::NotFound)
        );
        assert_eq!(
            fs.write("/etc/hostname/x", Bytes::new(), false),
            Err(FsError::NotDir)
        );
        fs.write("/tmp/a", Bytes::from_static(b"1"), false).unwrap();
        fs.write("/tmp/a", Bytes::from_static(b"2"), true).unwrap();
        assert_eq!(&fs.read("/tmp/a").unwrap()[..], b"12");
        fs.mkdir("/tmp/d/e", true).unwrap();
        assert_eq!(fs.mkdir("/tmp/d", false), Err(FsError::Exists));
        let names: Vec<String> = fs
            .list("/tmp")
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["a", "d"]);
        assert_eq!(fs.remove("/tmp/d", false), Err(FsError::IsDir));
        fs.remove("/tmp", true).unwrap();
        assert!(fs.stat("/tmp/a").is_none());
        assert!(fs.stat("/etc/hostname").is_some());
        let mut small = Vfs::empty(4);
        small
            .write("/a", Bytes::from_static(b"1234"), false)
            .unwrap();
        assert_eq!(
            small.write("/b", Bytes::from_static(b"5"), false),
            Err(FsError::NoSpace)
        );
        small.write("/a", Bytes::from_static(b"9"), false).unwrap();
        assert_eq!(small.used(), 1);
        // Writes to /dev/null vanish.
        fs.write("/dev/null", Bytes::from_static(b"x"), false)
            .unwrap();
        assert!(fs.read("/dev/null").unwrap().is_empty());
    }
}
