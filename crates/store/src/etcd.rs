//! The [`Store`] on a real etcd, through etcd-client. Every call is one round
//! trip bounded by `etcd.timeoutMs`, so an unreachable etcd turns into code 11
//! in that time rather than a hang.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare as ECompare, CompareOp, ConnectOptions, GetOptions, Identity,
    TlsOptions, Txn, TxnOp, TxnOpResponse,
};
use weft_cni::{Error, Result};

use crate::config::Etcd;
use crate::{
    Compare, Epoch, Kv, Read, ReadResult, Store, StoreError, StoreErrorKind, TxnResult, Write,
};

pub struct EtcdStore {
    rt: tokio::runtime::Runtime,
    client: Client,
    /// The whole invocation's budget: `timeoutMs` from connect.
    deadline: tokio::time::Instant,
    /// One attempt's share of it, so a request stuck on a dead member is
    /// abandoned in time to try another.
    slice: Duration,
    hint: String,
    trips: u64,
    epoch: Option<Epoch>,
    timeout: Duration,
}

/// Reads a secret (the password file, the TLS key), refusing one that group
/// or others can read: a credential in a world-readable file is as good as
/// published.
fn read_secret(path: &std::path::Path, field: &str) -> Result<Vec<u8>> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::config(format!("ipam.etcd.{field} {shown} cannot be read")).with_details(e)
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::config(format!(
            "ipam.etcd.{field} {shown} is readable by group or others; chmod 600 it"
        )));
    }
    std::fs::read(path).map_err(|e| {
        Error::config(format!("ipam.etcd.{field} {shown} cannot be read")).with_details(e)
    })
}

pub fn read_password(path: &std::path::Path) -> Result<String> {
    let raw = read_secret(path, "passwordFile")?;
    Ok(String::from_utf8_lossy(&raw)
        .trim_end_matches(['\n', '\r'])
        .to_string())
}

fn read_file(path: &std::path::Path, field: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::config(format!(
            "ipam.etcd.tls.{field} {} cannot be read",
            path.display()
        ))
        .with_details(e)
    })
}

fn classify(e: &etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    let (kind, msg) = match e {
        // A status that carries a local error source was made by tonic for a
        // connection that broke mid-call (etcd's own replies carry none):
        // that is etcd being unavailable, whatever code tonic gave it.
        E::GRpcStatus(s) if std::error::Error::source(s).is_some() => (
            StoreErrorKind::Unavailable,
            format!("{}: {}", s.message(), source_chain(s)),
        ),
        E::GRpcStatus(s) => match s.code() {
            tonic_code::UNAUTHENTICATED | tonic_code::PERMISSION_DENIED => {
                (StoreErrorKind::Auth, s.message().to_string())
            }
            tonic_code::UNAVAILABLE | tonic_code::DEADLINE_EXCEEDED | tonic_code::CANCELLED => {
                (StoreErrorKind::Unavailable, s.message().to_string())
            }
            // etcd reports bad credentials as InvalidArgument; its message
            // strings are part of its client API (clientv3 matches them too).
            _ if s.message().contains("authentication") || s.message().contains("user name") => {
                (StoreErrorKind::Auth, s.message().to_string())
            }
            _ => (StoreErrorKind::Other, s.message().to_string()),
        },
        E::TransportError(t) => (
            StoreErrorKind::Unavailable,
            format!("{t}: {}", source_chain(t)),
        ),
        E::IoError(io) => (StoreErrorKind::Unavailable, io.to_string()),
        other => (StoreErrorKind::Other, other.to_string()),
    };
    StoreError { kind, msg }
}

/// What to add to "unavailable" errors, from the config alone: the causes we
/// cannot see on the wire (a plaintext client at a TLS port, a missing client
/// certificate) show up only as closed connections.
fn hint(cfg: &Etcd) -> String {
    let at = cfg.endpoints.join(", ");
    let plain = cfg.endpoints.iter().all(|e| e.starts_with("http://"));
    let no_cert = cfg.tls.as_ref().is_some_and(|t| t.cert.is_none());
    if plain {
        format!(" (etcd at {at}; if it requires TLS, use https:// endpoints and ipam.etcd.tls)")
    } else if no_cert {
        format!(
            " (etcd at {at}; if it requires client certificates, set ipam.etcd.tls.cert and key)"
        )
    } else {
        format!(" (etcd at {at})")
    }
}

/// The gRPC codes we act on.
mod tonic_code {
    use tonic::Code;
    pub const CANCELLED: Code = Code::Cancelled;
    pub const DEADLINE_EXCEEDED: Code = Code::DeadlineExceeded;
    pub const PERMISSION_DENIED: Code = Code::PermissionDenied;
    pub const UNAVAILABLE: Code = Code::Unavailable;
    pub const UNAUTHENTICATED: Code = Code::Unauthenticated;
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}

fn with_hint(mut e: StoreError, hint: &str) -> StoreError {
    if e.kind == StoreErrorKind::Unavailable {
        e.msg.push_str(hint);
    }
    e
}

fn timed_out(what: &str) -> StoreError {
    StoreError {
        kind: StoreErrorKind::Unavailable,
        msg: format!("no answer from etcd within the timeout ({what})"),
    }
}

impl EtcdStore {
    pub fn connect(cfg: &Etcd) -> Result<Self> {
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut opts = ConnectOptions::new()
            .with_timeout(timeout)
            .with_connect_timeout(timeout);
        if let (Some(user), Some(file)) = (&cfg.username, &cfg.password_file) {
            opts = opts.with_user(user.clone(), read_password(file)?);
        }
        if let Some(tls) = &cfg.tls {
            let mut t = TlsOptions::new();
            if let Some(ca) = &tls.ca {
                t = t.ca_certificate(Certificate::from_pem(read_file(ca, "ca")?));
            }
            if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                t = t.identity(Identity::from_pem(
                    read_file(cert, "cert")?,
                    read_secret(key, "tls.key")?,
                ));
            }
            opts = opts.with_tls(t);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::unexpected("cannot start runtime").with_details(e))?;
        let connecting = Client::connect(cfg.endpoints.clone(), Some(opts));
        let client = rt
            .block_on(async { tokio::time::timeout_at(deadline, connecting).await })
            .map_err(|_| crate::store_err(with_hint(timed_out("connect"), &hint(cfg))))?
            .map_err(|e| crate::store_err(with_hint(classify(&e), &hint(cfg))))?;
        let slice = (timeout / 4).max(Duration::from_millis(250));
        Ok(EtcdStore {
            rt,
            client,
            deadline,
            slice,
            hint: hint(cfg),
            trips: 0,
            epoch: None,
            timeout,
        })
    }

    /// A fresh `timeoutMs` budget, for long-running callers (the agent) that
    /// make one bounded call after another.
    pub fn renew(&mut self) {
        self.deadline = tokio::time::Instant::now() + self.timeout;
    }

    /// The client, for what the [`Store`] trait does not cover (leases,
    /// watches); drive its futures with [`EtcdStore::block_on`].
    pub fn client(&self) -> etcd_client::Client {
        self.client.clone()
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// One transaction; a broken connection or a leaderless moment is retried
    /// (on whichever member answers) until the deadline. Retrying is safe:
    /// a transaction that did commit fails its compares the second time, and
    /// the reads that come back say what it did.
    fn run(&mut self, txn: Txn) -> Result<etcd_client::TxnResponse, StoreError> {
        let mut backoff = Duration::from_millis(10);
        loop {
            self.trips += 1;
            let mut kv = self.client.kv_client();
            let deadline = self.deadline;
            let until = deadline.min(tokio::time::Instant::now() + self.slice);
            let attempt = txn.clone();
            let outcome = self
                .rt
                .block_on(async { tokio::time::timeout_at(until, kv.txn(attempt)).await });
            let err = match outcome {
                Ok(Ok(resp)) => {
                    self.epoch = resp.header().map(|h| Epoch {
                        cluster: h.cluster_id(),
                        revision: h.revision(),
                    });
                    return Ok(resp);
                }
                Ok(Err(e)) => classify(&e),
                Err(_) => timed_out("transaction"),
            };
            let now = tokio::time::Instant::now();
            if err.kind != StoreErrorKind::Unavailable || now + backoff >= deadline {
                return Err(with_hint(err, &self.hint));
            }
            tracing::debug!(error = %err.msg, "etcd unavailable; retrying");
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
    }
}

fn get_op(r: &Read) -> TxnOp {
    match r {
        Read::Key(k) => TxnOp::get(k.as_bytes(), None),
        Read::Range { start, end } => TxnOp::get(
            start.as_bytes(),
            Some(GetOptions::new().with_range(end.as_bytes())),
        ),
        Read::Count { start, end } => TxnOp::get(
            start.as_bytes(),
            Some(
                GetOptions::new()
                    .with_range(end.as_bytes())
                    .with_count_only(),
            ),
        ),
    }
}

fn results(resp: &etcd_client::TxnResponse) -> Vec<ReadResult> {
    resp.op_responses()
        .into_iter()
        .filter_map(|op| match op {
            TxnOpResponse::Get(g) => Some(ReadResult {
                count: g.count().max(0) as u64,
                kvs: g
                    .kvs()
                    .iter()
                    .map(|kv| Kv {
                        key: String::from_utf8_lossy(kv.key()).to_string(),
                        value: kv.value().to_vec(),
                        mod_revision: kv.mod_revision(),
                        lease: kv.lease(),
                    })
                    .collect(),
            }),
            _ => None,
        })
        .collect()
}

impl Store for EtcdStore {
    fn read(&mut self, reads: &[Read]) -> Result<Vec<ReadResult>, StoreError> {
        // A transaction with no compares: several reads, one revision, one trip.
        let txn = Txn::new().and_then(reads.iter().map(get_op).collect::<Vec<_>>());
        let resp = self.run(txn)?;
        Ok(results(&resp))
    }

    fn txn(
        &mut self,
        compares: &[Compare],
        writes: &[Write],
        on_failure: &[Read],
    ) -> Result<TxnResult, StoreError> {
        let when: Vec<ECompare> = compares
            .iter()
            .map(|c| match c {
                Compare::Absent(k) => ECompare::create_revision(k.as_bytes(), CompareOp::Equal, 0),
                Compare::Present(k) => {
                    ECompare::create_revision(k.as_bytes(), CompareOp::Greater, 0)
                }
                Compare::ValueIs(k, v) => {
                    ECompare::value(k.as_bytes(), CompareOp::Equal, v.clone())
                }
                Compare::ModRevision(k, r) => {
                    ECompare::mod_revision(k.as_bytes(), CompareOp::Equal, *r)
                }
            })
            .collect();
        let then: Vec<TxnOp> = writes
            .iter()
            .map(|w| match w {
                Write::Put(k, v) => TxnOp::put(k.as_bytes(), v.clone(), None),
                Write::PutLeased(k, v, 0) => TxnOp::put(k.as_bytes(), v.clone(), None),
                Write::PutLeased(k, v, lease) => TxnOp::put(
                    k.as_bytes(),
                    v.clone(),
                    Some(etcd_client::PutOptions::new().with_lease(*lease)),
                ),
                Write::Delete(k) => TxnOp::delete(k.as_bytes(), None),
            })
            .collect();
        let otherwise: Vec<TxnOp> = on_failure.iter().map(get_op).collect();
        let resp = self.run(Txn::new().when(when).and_then(then).or_else(otherwise))?;
        let succeeded = resp.succeeded();
        Ok(TxnResult {
            succeeded,
            reads: if succeeded {
                Vec::new()
            } else {
                results(&resp)
            },
        })
    }

    fn round_trips(&self) -> u64 {
        self.trips
    }

    fn epoch(&self) -> Option<Epoch> {
        self.epoch
    }
}
