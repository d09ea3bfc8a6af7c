//! The etcd backend: every key under a prefix, transactions as etcd transactions, watches as
//! etcd watches, leases as etcd leases. The metaserver keeps nothing of its own, so replicas
//! sharing one etcd agree.
//!
//! Each unary request is bounded by `request_timeout_ms` (on our side: a gRPC deadline would
//! also end long-lived watch streams). A watch is bounded by gRPC flow control: a reader that
//! does not read holds the server back, not our memory; etcd cancels a watcher whose revision
//! it has compacted, which surfaces as [`StoreError::Compacted`].

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions,
    WatchOptions, WatchStream,
};

use super::{
    check_key, check_ttl, Compare, Event, EventKind, Kv, Op, StoreConfig, StoreError, Txn,
    TxnResult,
};

/// Keys per page when listing (each page is one request at the list's revision).
const LIST_PAGE: i64 = 1_000;
/// HTTP/2 keep-alive on the connection, so a dead etcd is noticed during a quiet watch.
const KEEP_ALIVE: (Duration, Duration) = (Duration::from_secs(10), Duration::from_secs(5));

/// The etcd store. Cheap to clone (the clones share one connection).
#[derive(Clone)]
pub struct Etcd {
    /// Shared: the client is large (kilobytes); each request clones it (cheap handles inside).
    client: Arc<Client>,
    endpoints: Arc<[String]>,
    prefix: Arc<str>,
    timeout: Duration,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("request_timeout", &self.timeout)
            .finish()
    }
}

/// An etcd client error as a [`StoreError`]; `lease` names the lease a "lease not found" is
/// about.
fn map_err(context: String, e: etcd_client::Error, lease: i64) -> StoreError {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(status) => {
            let message = status.message().to_owned();
            if message.contains("lease not found") {
                return StoreError::LeaseNotFound(lease);
            }
            // gRPC codes: 1 cancelled, 3 invalid argument, 4 deadline exceeded, 8 resource
            // exhausted, 10 aborted, 11 out of range, 14 unavailable.
            match status.code() as i32 {
                1 | 4 | 8 | 10 | 14 => StoreError::Unavailable { context, message },
                3 | 11 => StoreError::InvalidArgument(format!("{context}: {message}")),
                _ => StoreError::Internal {
                    context,
                    message: status.to_string(),
                },
            }
        }
        E::TransportError(e) => StoreError::Unavailable {
            context,
            message: e.to_string(),
        },
        E::IoError(source) => StoreError::Unavailable {
            context,
            message: source.to_string(),
        },
        E::LeaseKeepAliveError(m) if m.contains("not found") => StoreError::LeaseNotFound(lease),
        E::Utf8Error(e) => StoreError::Corrupt(format!("{context}: {e}")),
        e => StoreError::Internal {
            context,
            message: e.to_string(),
        },
    }
}

/// The first key after every key that starts with `prefix` (etcd's range end for a prefix);
/// `[0]` ("to the end") when there is none.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Etcd {
    /// Connects to `config.endpoints` and checks that etcd answers.
    pub async fn open(config: &StoreConfig) -> Result<Etcd, StoreError> {
        if config.endpoints.is_empty() {
            return Err(StoreError::Config(
                "the etcd backend needs at least one endpoint".into(),
            ));
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(config.dial_timeout())
            .with_keep_alive(KEEP_ALIVE.0, KEEP_ALIVE.1);
        let context = || format!("connect to etcd at {}", config.endpoints.join(","));
        let client = match tokio::time::timeout(
            config.dial_timeout(),
            Client::connect(&config.endpoints, Some(options)),
        )
        .await
        {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(map_err(context(), e, 0)),
            Err(_) => {
                return Err(StoreError::Unavailable {
                    context: context(),
                    message: format!("no connection within {} ms", config.dial_timeout_ms),
                })
            }
        };
        let etcd = Etcd {
            client: Arc::new(client),
            endpoints: config.endpoints.clone().into(),
            prefix: config.prefix.as_str().into(),
            timeout: config.request_timeout(),
        };
        let revision = etcd.revision().await?;
        tracing::info!(endpoints = ?etcd.endpoints, prefix = %etcd.prefix, revision,
            "etcd store open");
        Ok(etcd)
    }

    /// Runs one request with the request timeout.
    async fn call<T>(
        &self,
        context: impl FnOnce() -> String,
        lease: i64,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, request).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(map_err(context(), e, lease)),
            Err(_) => Err(StoreError::Unavailable {
                context: context(),
                message: format!("etcd did not answer within {} ms", self.timeout.as_millis()),
            }),
        }
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// A stored key as [`Kv`], without the prefix.
    fn kv(&self, kv: &etcd_client::KeyValue) -> Result<Kv, StoreError> {
        Ok(Kv {
            key: self.strip(kv.key())?,
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            lease: kv.lease(),
        })
    }

    fn strip(&self, key: &[u8]) -> Result<String, StoreError> {
        std::str::from_utf8(key)
            .ok()
            .and_then(|k| k.strip_prefix(&*self.prefix))
            .map(str::to_owned)
            .ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "etcd returned key {:?}, not a UTF-8 key under {:?}",
                    String::from_utf8_lossy(key),
                    self.prefix
                ))
            })
    }

    /// See [`super::Backend::get`].
    pub async fn get(&self, key: &str) -> Result<Option<Kv>, StoreError> {
        check_key(key)?;
        let mut c = Client::clone(&self.client);
        let resp = self
            .call(|| format!("get {key:?}"), 0, c.get(self.full(key), None))
            .await?;
        resp.kvs().first().map(|kv| self.kv(kv)).transpose()
    }

    /// See [`super::Backend::list`]: pages of 1,000 keys, all read at the revision of
    /// the first page.
    pub async fn list(&self, prefix: &str) -> Result<(Vec<Kv>, i64), StoreError> {
        let full = self.full(prefix);
        let end = prefix_end(full.as_bytes());
        let mut start = if full.is_empty() {
            vec![0]
        } else {
            full.into_bytes()
        };
        let mut revision = 0;
        let mut out = Vec::new();
        let mut c = Client::clone(&self.client);
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let resp = self
                .call(
                    || format!("list {prefix:?}"),
                    0,
                    c.get(start.clone(), Some(options)),
                )
                .await?;
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            for kv in resp.kvs() {
                out.push(self.kv(kv)?);
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        Ok((out, revision))
    }

    /// See [`super::Backend::txn`].
    pub async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        txn.validate()?;
        let lease = txn
            .ops
            .iter()
            .find_map(|op| match op {
                Op::Put { lease, .. } if *lease != 0 => Some(*lease),
                _ => None,
            })
            .unwrap_or(0);
        let compares: Vec<_> = txn
            .compares
            .iter()
            .map(|c| match c {
                Compare::ModRevision { key, revision: 0 } | Compare::Absent { key } => {
                    etcd_client::Compare::create_revision(self.full(key), CompareOp::Equal, 0)
                }
                Compare::ModRevision { key, revision } => {
                    etcd_client::Compare::mod_revision(self.full(key), CompareOp::Equal, *revision)
                }
                Compare::Present { key } => {
                    etcd_client::Compare::create_revision(self.full(key), CompareOp::Greater, 0)
                }
            })
            .collect();
        let ops: Vec<_> = txn
            .ops
            .into_iter()
            .map(|op| match op {
                Op::Put { key, value, lease } => etcd_client::TxnOp::put(
                    self.full(&key),
                    value,
                    (lease != 0).then(|| PutOptions::new().with_lease(lease)),
                ),
                Op::Delete { key } => etcd_client::TxnOp::delete(self.full(&key), None),
                Op::DeletePrefix { prefix } => etcd_client::TxnOp::delete(
                    self.full(&prefix),
                    Some(DeleteOptions::new().with_prefix()),
                ),
            })
            .collect();
        let mut c = Client::clone(&self.client);
        let resp = self
            .call(
                || "txn".to_owned(),
                lease,
                c.txn(etcd_client::Txn::new().when(compares).and_then(ops)),
            )
            .await?;
        Ok(TxnResult {
            succeeded: resp.succeeded(),
            revision: resp.header().map_or(0, |h| h.revision()),
        })
    }

    /// See [`super::Backend::watch`]: returns once etcd has created the watch.
    pub(super) async fn watch(
        &self,
        prefix: &str,
        from_revision: i64,
    ) -> Result<EtcdWatch, StoreError> {
        if from_revision < 0 {
            return Err(StoreError::InvalidArgument(format!(
                "watch from negative revision {from_revision}"
            )));
        }
        let mut options = WatchOptions::new().with_prefix();
        if from_revision > 0 {
            options = options.with_start_revision(from_revision);
        }
        let context = || format!("watch {prefix:?} from {from_revision}");
        let mut c = Client::clone(&self.client);
        let mut stream = self
            .call(context, 0, c.watch(self.full(prefix), Some(options)))
            .await?;
        let created = self
            .call(context, 0, stream.message())
            .await?
            .ok_or_else(|| StoreError::Unavailable {
                context: context(),
                message: "etcd closed the watch stream before creating the watch".into(),
            })?;
        let mut watch = EtcdWatch {
            stream,
            prefix: self.prefix.clone(),
            next_rev: from_revision,
            pending: VecDeque::new(),
            ended: None,
        };
        if from_revision == 0 {
            watch.next_rev = created.header().map_or(0, |h| h.revision()) + 1;
        }
        if !created.created() || created.canceled() {
            watch.absorb(&created)?;
        }
        Ok(watch)
    }

    /// See [`super::Backend::lease_grant`].
    pub async fn lease_grant(&self, ttl_s: i64) -> Result<i64, StoreError> {
        check_ttl(ttl_s)?;
        let mut c = Client::clone(&self.client);
        let resp = self
            .call(
                || format!("grant a {ttl_s} s lease"),
                0,
                c.lease_grant(ttl_s, None),
            )
            .await?;
        if !resp.error().is_empty() {
            return Err(StoreError::Internal {
                context: format!("grant a {ttl_s} s lease"),
                message: resp.error().to_owned(),
            });
        }
        Ok(resp.id())
    }

    /// See [`super::Backend::lease_keep_alive`].
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64, StoreError> {
        let mut c = Client::clone(&self.client);
        let renew = async {
            // Opening the keep-alive stream renews once (and fails if the lease is gone); one
            // more renewal tells us the TTL.
            let (mut keeper, mut stream) = c.lease_keep_alive(id).await?;
            keeper.keep_alive().await?;
            stream.message().await
        };
        match self.call(|| format!("renew lease {id}"), id, renew).await? {
            Some(resp) if resp.ttl() > 0 => Ok(resp.ttl()),
            _ => Err(StoreError::LeaseNotFound(id)),
        }
    }

    /// See [`super::Backend::lease_revoke`].
    pub async fn lease_revoke(&self, id: i64) -> Result<(), StoreError> {
        let mut c = Client::clone(&self.client);
        self.call(|| format!("revoke lease {id}"), id, c.lease_revoke(id))
            .await?;
        Ok(())
    }

    /// See [`super::Backend::revision`].
    pub async fn revision(&self) -> Result<i64, StoreError> {
        let mut c = Client::clone(&self.client);
        let key = if self.prefix.is_empty() {
            vec![0]
        } else {
            self.prefix.as_bytes().to_vec()
        };
        let resp = self
            .call(
                || "read the revision".to_owned(),
                0,
                c.get(key, Some(GetOptions::new().with_count_only())),
            )
            .await?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    /// See [`super::Backend::compact`] (etcd's compaction: it applies to the whole etcd, not
    /// only this prefix).
    pub async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        let mut c = Client::clone(&self.client);
        match self
            .call(
                || format!("compact at {revision}"),
                0,
                c.compact(revision, None),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(StoreError::Internal { message, .. } | StoreError::InvalidArgument(message))
                if message.contains("has been compacted") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// A watch on etcd: its stream, and the batches of a response not yet returned.
#[derive(Debug)]
pub(super) struct EtcdWatch {
    stream: WatchStream,
    prefix: Arc<str>,
    next_rev: i64,
    pending: VecDeque<Vec<Event>>,
    /// Set once the watch has failed: (requested, compacted) for a compaction, else (0, 0).
    ended: Option<(i64, i64)>,
}

impl EtcdWatch {
    pub(super) fn next_revision(&self) -> i64 {
        self.next_rev
    }

    pub(super) async fn next(&mut self) -> Result<Option<Vec<Event>>, StoreError> {
        loop {
            if let Some(batch) = self.pending.pop_front() {
                return Ok(Some(batch));
            }
            match self.ended {
                Some((requested, compacted)) if compacted > 0 => {
                    return Err(StoreError::Compacted {
                        requested,
                        compacted,
                    })
                }
                Some(_) => {
                    return Err(StoreError::Unavailable {
                        context: "watch".into(),
                        message: "the watch has ended; watch again from next_revision()".into(),
                    })
                }
                None => {}
            }
            let context = || format!("watch {:?} at revision {}", self.prefix, self.next_rev);
            match self.stream.message().await {
                Ok(Some(resp)) => self.absorb(&resp)?,
                Ok(None) => {
                    self.ended = Some((0, 0));
                    return Err(StoreError::Unavailable {
                        context: context(),
                        message: "etcd closed the watch stream".into(),
                    });
                }
                Err(e) => {
                    self.ended = Some((0, 0));
                    return Err(map_err(context(), e, 0));
                }
            }
        }
    }

    /// Takes a response's events into `pending`, one batch per revision, or fails the watch.
    fn absorb(&mut self, resp: &etcd_client::WatchResponse) -> Result<(), StoreError> {
        if resp.compact_revision() > 0 {
            self.ended = Some((self.next_rev, resp.compact_revision()));
            return Err(StoreError::Compacted {
                requested: self.next_rev,
                compacted: resp.compact_revision(),
            });
        }
        if resp.canceled() {
            self.ended = Some((0, 0));
            return Err(StoreError::Unavailable {
                context: format!("watch {:?}", self.prefix),
                message: format!("etcd canceled the watch: {}", resp.cancel_reason()),
            });
        }
        for e in resp.events() {
            let Some(kv) = e.kv() else { continue };
            let key = std::str::from_utf8(kv.key())
                .ok()
                .and_then(|k| k.strip_prefix(&*self.prefix))
                .ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "etcd watch returned key {:?}, not a UTF-8 key under {:?}",
                        String::from_utf8_lossy(kv.key()),
                        self.prefix
                    ))
                })?
                .to_owned();
            let event = match e.event_type() {
                EventType::Put => Event {
                    kind: EventKind::Put,
                    kv: Kv {
                        key,
                        value: kv.value().to_vec(),
                        create_revision: kv.create_revision(),
                        mod_revision: kv.mod_revision(),
                        lease: kv.lease(),
                    },
                },
                EventType::Delete => Event::delete(key, kv.mod_revision()),
            };
            let rev = event.kv.mod_revision;
            match self.pending.back_mut() {
                Some(batch) if batch.last().is_some_and(|b| b.kv.mod_revision == rev) => {
                    batch.push(event)
                }
                _ => self.pending.push_back(vec![event]),
            }
            self.next_rev = rev + 1;
        }
        Ok(())
    }
}
