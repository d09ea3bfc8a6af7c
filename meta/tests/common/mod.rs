//! What the metaserver's API tests share: a metaserver over HTTPS on either store (a fresh
//! etcd per test, or a redb file), with an admin client, and `both!`, which runs a test on
//! each.
#![allow(dead_code)] // each test file uses part of it

use std::time::{Duration, Instant};

use kubehub_meta::client::{Client, ClientError};
use kubehub_meta::config::MetaConfig;
use kubehub_meta::server::{self, Server};
use kubehub_meta::service::Meta;
use kubehub_testkit::etcd::Etcd;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Embedded,
    Etcd,
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub etcd: Option<Etcd>,
    pub extra: String,
}

impl Harness {
    pub fn new(kind: Kind, extra: &str) -> Harness {
        let etcd = (kind == Kind::Etcd).then(|| tokio::task::block_in_place(Etcd::start));
        Harness {
            dir: tempfile::tempdir().unwrap(),
            etcd,
            extra: extra.to_owned(),
        }
    }

    pub fn config(&self) -> MetaConfig {
        let store = match &self.etcd {
            Some(e) => format!(
                "[store]\nbackend = \"etcd\"\nendpoints = [\"{}\"]\nprefix = \"/t/\"\n",
                e.endpoint
            ),
            None => format!(
                "[store]\nbackend = \"embedded\"\npath = \"{}\"\n",
                self.dir.path().join("meta.redb").display()
            ),
        };
        let text = format!(
            "listen = \"127.0.0.1:0\"\nadmin_token_file = \"{}\"\nhub_url = \"https://hub.example:8443\"\n{}\n{store}",
            self.dir.path().join("admin.token").display(),
            self.extra,
        );
        MetaConfig::parse(&text).unwrap()
    }

    pub async fn start(&self) -> Running {
        // The embedded file stays locked until the previous server's last task lets go.
        let deadline = Instant::now() + Duration::from_secs(10);
        let meta = loop {
            match Meta::start(self.config()).await {
                Ok(m) => break m,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("meta did not start: {e}"),
            }
        };
        let server = server::start(meta.clone()).await.unwrap();
        let url = format!("https://{}", server.addr);
        let token = std::fs::read_to_string(self.dir.path().join("admin.token")).unwrap();
        let admin = Client::new(&url, meta.ca_pem(), Some(token.trim().to_owned()), None).unwrap();
        Running {
            meta,
            server,
            url,
            admin,
        }
    }
}

pub struct Running {
    pub meta: Meta,
    pub server: Server,
    pub url: String,
    pub admin: Client,
}

impl Running {
    pub fn as_token(&self, token: &str) -> Client {
        Client::new(&self.url, self.meta.ca_pem(), Some(token.to_owned()), None).unwrap()
    }

    pub async fn stop(self) {
        self.server.stop().await;
        drop(self.meta);
    }
}

pub fn code(r: Result<Value, ClientError>) -> (u16, String) {
    match r {
        Ok(v) => panic!("expected an error, got {v}"),
        Err(ClientError::Api { code, message }) => (code, message),
        Err(e) => panic!("expected an API error, got {e}"),
    }
}

/// Runs `$name(kind)` as two tests, `$name::embedded` and `$name::etcd`.
#[allow(unused_macros)] // not every test file runs on both stores
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$name(super::Kind::Embedded).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn etcd() {
                super::$name(super::Kind::Etcd).await
            }
        }
    };
}
