//! A synchronous JSON-RPC connection to ovsdb-server.
//!
//! One request at a time is enough for a short-lived plugin; the one trick is
//! pipelining a `monitor` of `cur_cfg` with the transaction that bumps
//! `next_cfg`, so waiting for ovs-vswitchd costs no extra round trip.

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OvsErrorKind {
    /// The socket could not be reached at all.
    Unreachable,
    /// The connection broke or returned nonsense.
    Protocol,
    /// A `wait` operation's condition did not hold within its timeout
    /// (RFC 7047's "timed out"): the rows are not as the transaction expected.
    WaitTimedOut,
    /// A row would break a constraint of the schema, a duplicate name say
    /// ("constraint violation").
    ConstraintViolation,
    /// The server refused the transaction for another reason.
    Refused,
    /// ovs-vswitchd did not catch up in time.
    Timeout,
}

#[derive(Debug, Clone)]
pub struct OvsError {
    pub kind: OvsErrorKind,
    pub msg: String,
}

impl OvsError {
    /// The server answered and refused the transaction, for whatever reason.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self.kind,
            OvsErrorKind::WaitTimedOut | OvsErrorKind::ConstraintViolation | OvsErrorKind::Refused
        )
    }
}

impl std::fmt::Display for OvsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for OvsError {}

fn err(kind: OvsErrorKind, msg: impl Into<String>) -> OvsError {
    OvsError {
        kind,
        msg: msg.into(),
    }
}

type Stream =
    serde_json::StreamDeserializer<'static, serde_json::de::IoRead<BufReader<UnixStream>>, Value>;

pub struct Client {
    reader: Stream,
    writer: UnixStream,
    next_id: u64,
    deadline: Duration,
}

impl Client {
    /// Connects; `timeout` bounds every later read as well.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, OvsError> {
        let stream = UnixStream::connect(path).map_err(|e| {
            err(
                OvsErrorKind::Unreachable,
                format!("cannot connect to OVSDB at {}: {e}", path.display()),
            )
        })?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|_| stream.set_write_timeout(Some(timeout)))
            .map_err(|e| err(OvsErrorKind::Protocol, e.to_string()))?;
        let writer = stream
            .try_clone()
            .map_err(|e| err(OvsErrorKind::Protocol, e.to_string()))?;
        let reader = serde_json::Deserializer::from_reader(BufReader::new(stream)).into_iter();
        Ok(Client {
            reader,
            writer,
            next_id: 1,
            deadline: timeout,
        })
    }

    fn send(&mut self, msg: &Value) -> Result<(), OvsError> {
        self.writer
            .write_all(msg.to_string().as_bytes())
            .map_err(|e| err(OvsErrorKind::Protocol, format!("writing to OVSDB: {e}")))
    }

    /// Next message from the server, answering its echo keep-alives on the way.
    fn recv(&mut self) -> Result<Value, OvsError> {
        loop {
            let msg = match self.reader.next() {
                Some(Ok(v)) => v,
                Some(Err(e)) if e.is_io() => {
                    return Err(err(
                        OvsErrorKind::Timeout,
                        format!("reading from OVSDB: {e}"),
                    ))
                }
                Some(Err(e)) => {
                    return Err(err(
                        OvsErrorKind::Protocol,
                        format!("bad JSON from OVSDB: {e}"),
                    ))
                }
                None => return Err(err(OvsErrorKind::Protocol, "OVSDB closed the connection")),
            };
            if msg.get("method").and_then(Value::as_str) == Some("echo") {
                let reply = json!({"id": msg["id"], "result": msg["params"], "error": null});
                self.send(&reply)?;
                continue;
            }
            return Ok(msg);
        }
    }

    fn request(&mut self, method: &str, params: Value) -> Result<u64, OvsError> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"method": method, "params": params, "id": id}))?;
        Ok(id)
    }

    fn reply_to(&mut self, id: u64) -> Result<Value, OvsError> {
        loop {
            let msg = self.recv()?;
            if msg.get("id").and_then(Value::as_u64) == Some(id) {
                if !msg["error"].is_null() {
                    return Err(err(
                        OvsErrorKind::Protocol,
                        format!("OVSDB error: {}", msg["error"]),
                    ));
                }
                return Ok(msg["result"].clone());
            }
        }
    }

    /// Runs one transaction and returns each operation's result.
    pub fn transact(&mut self, ops: &[Value]) -> Result<Vec<Value>, OvsError> {
        let id = self.request("transact", txn_params(ops))?;
        let result = self.reply_to(id)?;
        check_results(result, ops.len())
    }

    /// Sends a transaction and returns without reading its reply, so the
    /// caller can work while ovsdb-server answers ([`Client::finish_read`]).
    pub fn begin(&mut self, ops: &[Value]) -> Result<PendingRead, OvsError> {
        let id = self.request("transact", txn_params(ops))?;
        Ok(PendingRead {
            id,
            n_ops: ops.len(),
        })
    }

    pub fn finish_read(&mut self, p: PendingRead) -> Result<Vec<Value>, OvsError> {
        let result = self.reply_to(p.id)?;
        check_results(result, p.n_ops)
    }

    /// Runs a transaction that bumps `next_cfg` and returns once ovs-vswitchd
    /// reports it applied (cur_cfg caught up), as `ovs-vsctl` does by default.
    pub fn transact_and_wait(&mut self, ops: &[Value]) -> Result<Vec<Value>, OvsError> {
        let pending = self.send_and_wait(ops)?;
        self.finish(pending)
    }

    /// The first half of [`Client::transact_and_wait`]: sends the transaction
    /// (pipelined with a monitor of cur_cfg) and returns without reading, so
    /// the caller can work while ovs-vswitchd applies it.
    pub fn send_and_wait(&mut self, ops: &[Value]) -> Result<PendingTxn, OvsError> {
        let mut all: Vec<Value> = ops.to_vec();
        all.push(json!({"op": "mutate", "table": "Open_vSwitch", "where": [], "mutations": [["next_cfg", "+=", 1]]}));
        all.push(
            json!({"op": "select", "table": "Open_vSwitch", "where": [], "columns": ["next_cfg"]}),
        );
        // Monitor ids must be unique per connection; one per wait keeps it simple.
        let monitor_name = format!("weft-cfg-{}", self.next_id);
        let monitor =
            json!(["Open_vSwitch", monitor_name, {"Open_vSwitch": {"columns": ["cur_cfg"]}}]);
        let mon_id = self.request("monitor", monitor)?;
        let txn_id = self.request("transact", txn_params(&all))?;
        Ok(PendingTxn {
            mon_id,
            txn_id,
            monitor_name,
            n_ops: all.len(),
            started: Instant::now(),
        })
    }

    /// The second half: the operations' results once ovs-vswitchd caught up.
    pub fn finish(&mut self, p: PendingTxn) -> Result<Vec<Value>, OvsError> {
        let mut cur_cfg: Option<i64> = None;
        let mut target: Option<i64> = None;
        let mut results = Vec::new();
        loop {
            if let (Some(cur), Some(want)) = (cur_cfg, target) {
                if cur >= want {
                    // The reply to the cancel is skipped by later reads, which match on id.
                    self.request("monitor_cancel", json!([p.monitor_name]))?;
                    return Ok(results);
                }
            }
            if p.started.elapsed() > self.deadline {
                return Err(err(
                    OvsErrorKind::Timeout,
                    "ovs-vswitchd did not apply the change in time",
                ));
            }
            let msg = self.recv()?;
            let id = msg.get("id").and_then(Value::as_u64);
            if id == Some(p.mon_id) {
                if !msg["error"].is_null() {
                    return Err(err(
                        OvsErrorKind::Protocol,
                        format!("OVSDB monitor error: {}", msg["error"]),
                    ));
                }
                cur_cfg = cur_cfg.max(max_cur_cfg(&msg["result"]));
            } else if id == Some(p.txn_id) {
                if !msg["error"].is_null() {
                    return Err(err(
                        OvsErrorKind::Protocol,
                        format!("OVSDB error: {}", msg["error"]),
                    ));
                }
                let mut r = check_results(msg["result"].clone(), p.n_ops)?;
                let bumped = r
                    .pop()
                    .and_then(|sel| sel["rows"].get(0).and_then(|row| row["next_cfg"].as_i64()));
                if r.pop().and_then(|m| m["count"].as_u64()) != Some(1) {
                    return Err(err(
                        OvsErrorKind::Refused,
                        "OVSDB has no Open_vSwitch row; is Open vSwitch initialised (ovs-vsctl init)?",
                    ));
                }
                target = Some(
                    bumped.ok_or_else(|| err(OvsErrorKind::Protocol, "no next_cfg in reply"))?,
                );
                results = r;
            } else if msg.get("method").and_then(Value::as_str) == Some("update") {
                cur_cfg = cur_cfg.max(max_cur_cfg(&msg["params"][1]));
            }
        }
    }
}

/// A transaction sent by [`Client::begin`], not yet read back.
#[must_use = "read its reply with finish_read"]
pub struct PendingRead {
    id: u64,
    n_ops: usize,
}

/// A transaction sent by [`Client::send_and_wait`], not yet read back.
#[must_use = "finish it, or the change may not be applied when you go on"]
pub struct PendingTxn {
    mon_id: u64,
    txn_id: u64,
    monitor_name: String,
    n_ops: usize,
    started: Instant,
}

fn txn_params(ops: &[Value]) -> Value {
    let mut params = vec![json!("Open_vSwitch")];
    params.extend(ops.iter().cloned());
    Value::Array(params)
}

/// cur_cfg from a monitor reply or update: {"Open_vSwitch": {uuid: {"new": {"cur_cfg": N}}}}.
fn max_cur_cfg(updates: &Value) -> Option<i64> {
    updates["Open_vSwitch"]
        .as_object()?
        .values()
        .filter_map(|row| row["new"]["cur_cfg"].as_i64())
        .max()
}

/// Per RFC 7047 a failed transaction still returns an array; any element with
/// "error" (including one past the last operation, for commit failures) fails it.
fn check_results(result: Value, n_ops: usize) -> Result<Vec<Value>, OvsError> {
    let Value::Array(items) = result else {
        return Err(err(
            OvsErrorKind::Protocol,
            "transaction reply is not an array",
        ));
    };
    if let Some(e) = items
        .iter()
        .find(|r| r.get("error").is_some_and(|e| !e.is_null()))
    {
        let what = e["error"].as_str().unwrap_or("error");
        let details = e["details"].as_str().unwrap_or("");
        let kind = match what {
            "timed out" => OvsErrorKind::WaitTimedOut,
            "constraint violation" => OvsErrorKind::ConstraintViolation,
            _ => OvsErrorKind::Refused,
        };
        return Err(err(
            kind,
            format!("OVSDB refused the transaction: {what}: {details}"),
        ));
    }
    if items.len() < n_ops {
        return Err(err(OvsErrorKind::Protocol, "transaction reply is short"));
    }
    Ok(items.into_iter().take(n_ops).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_with_errors_fail() {
        let ok = json!([{"count": 1}, {"rows": []}]);
        assert_eq!(check_results(ok, 2).unwrap().len(), 2);
        let bad = json!([{"count": 1}, {"error": "constraint violation", "details": "dup name"}]);
        let e = check_results(bad, 2).unwrap_err();
        assert_eq!(e.kind, OvsErrorKind::ConstraintViolation);
        assert!(e.msg.contains("dup name"));
        let wait = json!([{"error": "timed out"}, {"error": "aborted"}]);
        assert_eq!(
            check_results(wait, 2).unwrap_err().kind,
            OvsErrorKind::WaitTimedOut
        );
        let commit = json!([{"count": 1}, {"error": "referential integrity violation"}]);
        let e = check_results(commit, 1).unwrap_err();
        assert_eq!(e.kind, OvsErrorKind::Refused);
        assert!(e.is_refusal());
    }

    #[test]
    fn cur_cfg_is_read_from_updates() {
        let u = json!({"Open_vSwitch": {"abc": {"new": {"cur_cfg": 7}}}});
        assert_eq!(max_cur_cfg(&u), Some(7));
        assert_eq!(max_cur_cfg(&json!({})), None);
    }
}
