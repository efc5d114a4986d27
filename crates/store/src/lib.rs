//! What weft needs from etcd, as a small trait: batched reads, and a
//! transaction that either applies writes when every compare holds or returns
//! reads taken at the same revision. [`MemStore`] implements it in memory for
//! unit tests and counts round trips like the etcd store does;
//! [`etcd::EtcdStore`] is the real one, configured by [`config::Etcd`].

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::panic))]

pub mod config;
pub mod etcd;

use std::collections::BTreeMap;

use weft_cni::error::{self, Error, STORE_AUTH};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    Key(String),
    /// Keys in [start, end).
    Range {
        start: String,
        end: String,
    },
    /// How many keys lie in [start, end).
    Count {
        start: String,
        end: String,
    },
}

impl Read {
    pub fn prefix(p: &str) -> Read {
        Read::Range {
            start: p.to_string(),
            end: prefix_end(p),
        }
    }
}

/// The first key after every key that starts with `p`.
pub fn prefix_end(p: &str) -> String {
    let mut b = p.as_bytes().to_vec();
    while let Some(last) = b.pop() {
        if last < 0xff {
            b.push(last + 1);
            return String::from_utf8_lossy(&b).to_string();
        }
    }
    "\0".to_string()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
    /// The lease the key lives under; 0 for none.
    pub lease: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadResult {
    pub kvs: Vec<Kv>,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    Absent(String),
    Present(String),
    ValueIs(String, Vec<u8>),
    ModRevision(String, i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put(String, Vec<u8>),
    /// A put that keeps the key under a lease (0: none).
    PutLeased(String, Vec<u8>, i64),
    Delete(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResult {
    pub succeeded: bool,
    /// The `on_failure` reads, when the compares did not hold.
    pub reads: Vec<ReadResult>,
}

/// Which etcd, and how far along, a reply came from. A cache written under
/// one epoch is suspect under another: a different cluster, or a revision
/// lower than one seen before (a restored snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Epoch {
    pub cluster: u64,
    pub revision: i64,
}

impl Epoch {
    /// Could `self` have been seen after `earlier`, on the same data?
    pub fn follows(&self, earlier: &Epoch) -> bool {
        self.cluster == earlier.cluster && self.revision >= earlier.revision
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// No answer in time: the caller may retry later (CNI code 11).
    Unavailable,
    /// Refused our credentials or certificates.
    Auth,
    Other,
}

#[derive(Debug, Clone)]
pub struct StoreError {
    pub kind: StoreErrorKind,
    pub msg: String,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

/// The host's name: the default node name, under which weft and weft-ipam
/// keep a host's records.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// The CNI error a store failure is reported as.
pub fn store_err(e: StoreError) -> Error {
    match e.kind {
        StoreErrorKind::Unavailable => Error::new(
            error::TRY_AGAIN_LATER,
            format!("etcd is unavailable: {}", e.msg),
        ),
        StoreErrorKind::Auth => Error::new(STORE_AUTH, format!("etcd refused us: {}", e.msg)),
        StoreErrorKind::Other => Error::new(error::UNEXPECTED, format!("etcd error: {}", e.msg)),
    }
}

pub trait Store {
    /// One round trip.
    fn read(&mut self, reads: &[Read]) -> Result<Vec<ReadResult>, StoreError>;
    /// One round trip.
    fn txn(
        &mut self,
        compares: &[Compare],
        writes: &[Write],
        on_failure: &[Read],
    ) -> Result<TxnResult, StoreError>;
    /// Round trips made so far.
    fn round_trips(&self) -> u64;
    /// The epoch of the last reply, when the store tells.
    fn epoch(&self) -> Option<Epoch> {
        None
    }
}

/// etcd's semantics in a BTreeMap.
#[derive(Debug, Default)]
pub struct MemStore {
    pub data: BTreeMap<String, (Vec<u8>, i64)>,
    revision: i64,
    trips: u64,
    /// Fails every call while set, as an unreachable etcd would.
    pub down: bool,
    /// The lease of each key that has one.
    pub leases: BTreeMap<String, i64>,
    /// Stands for etcd's cluster ID: a test sets another to play a
    /// replaced cluster.
    pub cluster: u64,
}

impl MemStore {
    fn do_read(&self, r: &Read) -> ReadResult {
        let kv = |(k, (v, rev)): (&String, &(Vec<u8>, i64))| Kv {
            key: k.clone(),
            value: v.clone(),
            mod_revision: *rev,
            lease: self.leases.get(k).copied().unwrap_or(0),
        };
        match r {
            Read::Key(k) => {
                let kvs: Vec<Kv> = self.data.get_key_value(k).map(kv).into_iter().collect();
                ReadResult {
                    count: kvs.len() as u64,
                    kvs,
                }
            }
            Read::Range { start, end } => {
                let kvs: Vec<Kv> = self
                    .data
                    .range(start.clone()..end.clone())
                    .map(kv)
                    .collect();
                ReadResult {
                    count: kvs.len() as u64,
                    kvs,
                }
            }
            Read::Count { start, end } => ReadResult {
                kvs: Vec::new(),
                count: self.data.range(start.clone()..end.clone()).count() as u64,
            },
        }
    }

    fn holds(&self, c: &Compare) -> bool {
        match c {
            Compare::Absent(k) => !self.data.contains_key(k),
            Compare::Present(k) => self.data.contains_key(k),
            Compare::ValueIs(k, v) => self.data.get(k).is_some_and(|(have, _)| have == v),
            Compare::ModRevision(k, r) => self.data.get(k).is_some_and(|(_, have)| have == r),
        }
    }

    fn check_up(&mut self) -> Result<(), StoreError> {
        self.trips += 1;
        if self.down {
            return Err(StoreError {
                kind: StoreErrorKind::Unavailable,
                msg: "store is down".into(),
            });
        }
        Ok(())
    }
}

impl Store for MemStore {
    fn read(&mut self, reads: &[Read]) -> Result<Vec<ReadResult>, StoreError> {
        self.check_up()?;
        Ok(reads.iter().map(|r| self.do_read(r)).collect())
    }

    fn txn(
        &mut self,
        compares: &[Compare],
        writes: &[Write],
        on_failure: &[Read],
    ) -> Result<TxnResult, StoreError> {
        self.check_up()?;
        if !compares.iter().all(|c| self.holds(c)) {
            return Ok(TxnResult {
                succeeded: false,
                reads: on_failure.iter().map(|r| self.do_read(r)).collect(),
            });
        }
        self.revision += 1;
        for w in writes {
            match w {
                Write::Put(k, v) => {
                    self.data.insert(k.clone(), (v.clone(), self.revision));
                    self.leases.remove(k);
                }
                Write::PutLeased(k, v, lease) => {
                    self.data.insert(k.clone(), (v.clone(), self.revision));
                    if *lease == 0 {
                        self.leases.remove(k);
                    } else {
                        self.leases.insert(k.clone(), *lease);
                    }
                }
                Write::Delete(k) => {
                    self.data.remove(k);
                    self.leases.remove(k);
                }
            }
        }
        Ok(TxnResult {
            succeeded: true,
            reads: Vec::new(),
        })
    }

    fn round_trips(&self) -> u64 {
        self.trips
    }

    fn epoch(&self) -> Option<Epoch> {
        Some(Epoch {
            cluster: self.cluster,
            revision: self.revision,
        })
    }
}
