//! The OVS side of an attachment: bridge, port, external_ids, and waiting for
//! ovs-vswitchd, on top of the plans in `weft_ovsdb::plan`.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use weft_cni::error::{self, Error, Result};
use weft_ovsdb::plan::PortSpec;
use weft_ovsdb::{
    plan, read_map, read_uuid, Client, OvsError, OvsErrorKind, PendingRead, PendingTxn,
};

use crate::config::DatapathType;
use crate::overlay::tunnels::Existing;
use crate::{ids, vlan};

const TIMEOUT: Duration = Duration::from_secs(10);

fn ovs_err(e: OvsError) -> Error {
    let code = match e.kind {
        OvsErrorKind::Timeout => error::OVS_PORT_FAILURE,
        _ => error::OVSDB_FAILURE,
    };
    Error::new(code, e.msg)
}

/// A port weft made, as found again through its external_ids.
#[derive(Debug, Clone)]
pub struct FoundPort {
    pub uuid: String,
    pub name: String,
    pub external_ids: Vec<(String, String)>,
    /// Its VLAN, when the select asked for `tag` and it has one.
    pub tag: Option<u32>,
}

impl FoundPort {
    pub fn id(&self, key: &str) -> Option<&str> {
        self.external_ids
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

pub struct Ovs {
    client: Client,
}

impl Ovs {
    pub fn connect(socket: &Path) -> Result<Self> {
        let client = Client::connect(socket, TIMEOUT)
            .map_err(|e| Error::new(error::OVSDB_FAILURE, e.msg))?;
        Ok(Ovs { client })
    }

    /// None when nothing listens on the socket: ovsdb-server is not running.
    pub fn connect_if_running(socket: &Path) -> Result<Option<Self>> {
        match Client::connect(socket, TIMEOUT) {
            Ok(client) => Ok(Some(Ovs { client })),
            Err(e) if e.kind == OvsErrorKind::Unreachable => {
                tracing::warn!(error = %e, "OVSDB unreachable");
                Ok(None)
            }
            Err(e) => Err(Error::new(error::OVSDB_FAILURE, e.msg)),
        }
    }

    /// Sends the transaction that attaches `port` to `bridge` and returns at
    /// once; [`Ovs::finish_attach`] waits for ovs-vswitchd.
    pub fn begin_attach(
        &mut self,
        bridge: &str,
        port: &PortSpec,
        extra: &[Value],
    ) -> Result<PendingTxn> {
        self.client
            .send_and_wait(&plan::add_port(bridge, port, extra))
            .map_err(ovs_err)
    }

    /// Waits for the attach, creating the bridge with `datapath_type` when it
    /// was missing, and returns the bridge's datapath type once ovs-vswitchd
    /// has opened the port, with the results of the `extra` operations.
    pub fn finish_attach(
        &mut self,
        pending: PendingTxn,
        bridge: &str,
        datapath_type: DatapathType,
        spec: &PortSpec,
        extra: &[Value],
    ) -> Result<(DatapathType, Vec<Value>)> {
        let port = spec.name.as_str();
        let ops = plan::add_port(bridge, spec, extra);
        let mut outcome = self.client.finish(pending);
        let mut tried_bridge = false;
        let mut tried_stale = false;
        let results = loop {
            match outcome {
                Ok(r) => break r,
                // The leading `wait` times out when the bridge does not exist yet.
                Err(e) if e.kind == OvsErrorKind::WaitTimedOut && !tried_bridge => {
                    tried_bridge = true;
                    self.create_bridge(bridge, datapath_type)?;
                }
                // A port row of the same name outlived its link (a crash between
                // steps); its name is ours, derived from this container and ifname.
                Err(e) if e.kind == OvsErrorKind::ConstraintViolation && !tried_stale => {
                    tried_stale = true;
                    tracing::warn!(port, "removing a stale OVS port of the same name");
                    self.detach(port)?;
                }
                Err(e) => return Err(ovs_err(e)),
            }
            outcome = self.client.transact_and_wait(&ops);
        };
        let dp = DatapathType::from_ovsdb(
            results
                .get(plan::ADD_PORT_BRIDGE_SELECT)
                .and_then(|r| r["rows"].get(0))
                .and_then(|row| row["datapath_type"].as_str())
                .unwrap_or(""),
        );
        self.port_healthy(port)?;
        let extras = results
            .get(plan::ADD_PORT_EXTRA..)
            .unwrap_or_default()
            .to_vec();
        Ok((dp, extras))
    }

    /// Adds and removes ports in one transaction and waits for ovs-vswitchd.
    /// False when a port to add already existed (another process was
    /// quicker), in which case nothing changed, or was removed again
    /// before it could be checked.
    pub fn change_ports(
        &mut self,
        bridge: &str,
        add: &[PortSpec],
        remove: &[String],
    ) -> Result<bool> {
        let ops = plan::change_ports(bridge, add, remove);
        if ops.is_empty() {
            return Ok(true);
        }
        match self.client.transact_and_wait(&ops) {
            Ok(_) => {}
            Err(e) if e.kind == OvsErrorKind::WaitTimedOut => return Ok(false),
            Err(e) => return Err(ovs_err(e)),
        }
        for p in add {
            // Removed again already: another process planned from a newer
            // view; the caller plans again from what is there.
            if self.port_state(&p.name)?.is_none() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Sets some of a port's external_ids, keeping the others.
    pub fn set_external_ids(&mut self, port: &str, ids: &[(String, String)]) -> Result<()> {
        self.client
            .transact(&plan::set_port_ids(port, ids))
            .map(|_| ())
            .map_err(ovs_err)
    }

    /// The tunnel ports weft made for `net` on this host.
    pub fn tunnel_ports(&mut self, net: &str) -> Result<Vec<Existing>> {
        let r = self
            .client
            .transact(&plan::find_ports(&[(ids::TUNNEL_FOR, net)]))
            .map_err(ovs_err)?;
        Ok(existing_tunnels(r.first().unwrap_or(&Value::Null)))
    }

    /// Every port weft made on this host: attachments, tunnels, gateways.
    pub fn weft_ports(&mut self) -> Result<Vec<FoundPort>> {
        let ports = self.find(plan::ports_with_ids())?;
        Ok(ports
            .into_iter()
            .filter(|p| {
                p.external_ids
                    .iter()
                    .any(|(k, _)| k.starts_with(ids::PREFIX))
            })
            .collect())
    }

    fn create_bridge(&mut self, bridge: &str, datapath_type: DatapathType) -> Result<()> {
        self.create_bridge_with(bridge, datapath_type, &[])
            .map(|_| ())
    }

    /// Creates `bridge` with `ids` among its external_ids; false when
    /// another process created it first.
    fn create_bridge_with(
        &mut self,
        bridge: &str,
        datapath_type: DatapathType,
        ids: &[(&str, &str)],
    ) -> Result<bool> {
        let mut all = vec![(ids::BRIDGE, "true")];
        all.extend_from_slice(ids);
        match self.client.transact_and_wait(&plan::create_bridge(
            bridge,
            datapath_type.as_ovsdb(),
            &all,
            Some(vlan::PARKED),
        )) {
            Ok(_) => Ok(true),
            // Another ADD created it first: that is what we wanted.
            Err(e) if e.kind == OvsErrorKind::ConstraintViolation => Ok(false),
            Err(e) => Err(ovs_err(e)),
        }
    }

    /// Asks for `bridge`'s external_ids without waiting for the answer.
    pub fn begin_bridge_ids(&mut self, bridge: &str) -> Result<PendingRead> {
        self.client
            .begin(&plan::bridge_ids(bridge))
            .map_err(ovs_err)
    }

    /// `bridge`'s external_ids, None when there is no such bridge.
    fn bridge_ids(&mut self, pending: PendingRead) -> Result<Option<Vec<(String, String)>>> {
        let r = self.client.finish_read(pending).map_err(ovs_err)?;
        Ok(r.first()
            .and_then(|r| r["rows"].get(0))
            .map(|row| read_map(&row["external_ids"])))
    }

    /// The VLAN of single-host network `net` on `bridge` (see [`vlan`]),
    /// claimed now if it has none, creating the bridge if need be.
    /// `pending` is [`Ovs::begin_bridge_ids`]'s question.
    pub fn local_vlan(
        &mut self,
        pending: PendingRead,
        bridge: &str,
        net: &str,
        datapath_type: DatapathType,
    ) -> Result<u32> {
        let key = vlan::key(net);
        let mut ids = self.bridge_ids(pending)?;
        for _ in 0..16 {
            match &ids {
                None => {
                    let tag = *vlan::LOCAL.start();
                    if self.create_bridge_with(
                        bridge,
                        datapath_type,
                        &[(&key, &tag.to_string())],
                    )? {
                        return Ok(tag);
                    }
                }
                Some(have) => {
                    if let Some(tag) = vlan::lookup(have, net) {
                        return Ok(tag);
                    }
                    let tag = vlan::pick(have).ok_or_else(|| {
                        Error::new(
                            weft_cni::error::POOL_EXHAUSTED,
                            format!(
                                "all {} VLANs for single-host networks on bridge {bridge} are taken",
                                vlan::LOCAL.count()
                            ),
                        )
                    })?;
                    match self.client.transact(&plan::claim_bridge_id(
                        bridge,
                        have,
                        &key,
                        &tag.to_string(),
                    )) {
                        Ok(_) => return Ok(tag),
                        // Another ADD claimed a tag first: look again.
                        Err(e) if e.is_refusal() => {}
                        Err(e) => return Err(ovs_err(e)),
                    }
                }
            }
            let again = self.begin_bridge_ids(bridge)?;
            ids = self.bridge_ids(again)?;
        }
        Err(Error::new(
            error::TRY_AGAIN_LATER,
            format!("the VLANs on bridge {bridge} kept changing under us; try again"),
        ))
    }

    /// The single-host networks `bridge` records VLANs for.
    pub fn local_vlans(&mut self, bridge: &str) -> Result<Vec<(String, u32)>> {
        let p = self.begin_bridge_ids(bridge)?;
        Ok(self
            .bridge_ids(p)?
            .map(|ids| vlan::networks(&ids))
            .unwrap_or_default())
    }

    /// Forgets single-host network `net`'s VLAN on `bridge` (GC, once no
    /// port of it is left).
    pub fn forget_local_vlan(&mut self, bridge: &str, net: &str) -> Result<()> {
        self.client
            .transact(&plan::remove_bridge_ids(bridge, &[vlan::key(net)]))
            .map(|_| ())
            .map_err(ovs_err)
    }

    /// Ports with their VLAN tags (all of them when `names` is empty).
    pub fn port_tags(&mut self, names: &[&str]) -> Result<Vec<FoundPort>> {
        self.find(plan::port_tags(names))
    }

    /// Puts port `name` on VLAN `tag`.
    pub fn set_port_tag(&mut self, name: &str, tag: u32) -> Result<()> {
        self.client
            .transact_and_wait(&plan::set_port_tag(name, tag))
            .map(|_| ())
            .map_err(ovs_err)
    }

    /// ovs-vswitchd writes `error` or ofport -1 when it cannot use an interface.
    pub fn port_healthy(&mut self, port: &str) -> Result<()> {
        match self.port_state(port)? {
            Some(()) => Ok(()),
            None => Err(Error::new(
                error::OVS_PORT_FAILURE,
                format!(
                    "port {port} vanished from OVS as it was made (another process removed it)"
                ),
            )),
        }
    }

    /// [`Ovs::port_healthy`], with None when the interface has no row.
    fn port_state(&mut self, port: &str) -> Result<Option<()>> {
        let r = self
            .client
            .transact(&plan::interface_state(port))
            .map_err(ovs_err)?;
        let Some(row) = r.first().and_then(|r| r["rows"].get(0)).cloned() else {
            return Ok(None);
        };
        if let Some(msg) = row["error"].as_str() {
            return Err(Error::new(
                error::OVS_PORT_FAILURE,
                format!("ovs-vswitchd cannot use {port}: {msg}"),
            ));
        }
        if row["ofport"].as_i64().is_none_or(|p| p < 1) {
            return Err(Error::new(
                error::OVS_PORT_FAILURE,
                format!("ovs-vswitchd gave {port} no OpenFlow port"),
            ));
        }
        Ok(Some(()))
    }

    /// Removes the port named `port`; a missing port is success.
    pub fn detach(&mut self, port: &str) -> Result<bool> {
        let found = self.find(plan::find_port_by_name(port))?;
        if found.is_empty() {
            return Ok(false);
        }
        self.remove(&found)?;
        Ok(true)
    }

    /// Removes ports from the configuration. We do not wait for ovs-vswitchd
    /// to tear them down (10 ms on a busy host): the database is what it
    /// follows, and nothing after a removal depends on its timing.
    pub fn remove(&mut self, ports: &[FoundPort]) -> Result<()> {
        if ports.is_empty() {
            return Ok(());
        }
        let uuids: Vec<String> = ports.iter().map(|p| p.uuid.clone()).collect();
        self.client
            .transact(&plan::remove_ports(&uuids))
            .map_err(ovs_err)?;
        Ok(())
    }

    pub fn find_tagged(&mut self, ids: &[(&str, &str)]) -> Result<Vec<FoundPort>> {
        self.find(plan::find_ports(ids))
    }

    pub fn find_by_name(&mut self, name: &str) -> Result<Option<FoundPort>> {
        Ok(self.find(plan::find_port_by_name(name))?.into_iter().next())
    }

    fn find(&mut self, ops: Vec<Value>) -> Result<Vec<FoundPort>> {
        let r = self.client.transact(&ops).map_err(ovs_err)?;
        Ok(found_ports(r.first().unwrap_or(&Value::Null)))
    }

    /// Is `port_uuid` one of `bridge`'s ports?
    pub fn bridge_has_port(&mut self, bridge: &str, port_uuid: &str) -> Result<bool> {
        let r = self
            .client
            .transact(&plan::bridge(bridge))
            .map_err(ovs_err)?;
        let ports = &r
            .first()
            .and_then(|r| r["rows"].get(0))
            .cloned()
            .unwrap_or(Value::Null)["ports"];
        // A set of one is sent bare as ["uuid", x]; larger ones as ["set", [...]].
        let has = match read_uuid(ports) {
            Some(u) => u == port_uuid,
            None => ports
                .get(1)
                .and_then(Value::as_array)
                .is_some_and(|items| items.iter().any(|i| read_uuid(i) == Some(port_uuid))),
        };
        Ok(has)
    }

    /// The OVS type of interface `name` ("" for system, "internal", ...);
    /// None when OVS has no such interface.
    pub fn interface_type(&mut self, name: &str) -> Result<Option<String>> {
        let r = self
            .client
            .transact(&plan::interface_type(name))
            .map_err(ovs_err)?;
        Ok(r.first()
            .and_then(|r| r["rows"].get(0))
            .map(|row| row["type"].as_str().unwrap_or("").to_string()))
    }

    /// The datapath type of `bridge`, if it exists ("" means system).
    pub fn bridge_datapath(&mut self, bridge: &str) -> Result<Option<DatapathType>> {
        let r = self
            .client
            .transact(&plan::bridge(bridge))
            .map_err(ovs_err)?;
        Ok(r.first()
            .and_then(|r| r["rows"].get(0))
            .map(|row| DatapathType::from_ovsdb(row["datapath_type"].as_str().unwrap_or(""))))
    }

    pub fn bridge_exists(&mut self, bridge: &str) -> Result<bool> {
        let r = self
            .client
            .transact(&plan::bridge(bridge))
            .map_err(ovs_err)?;
        Ok(r.first().is_some_and(weft_ovsdb::has_rows))
    }

    /// Removes `bridge` if weft created it (its external_ids say so).
    pub fn remove_own_bridge(&mut self, bridge: &str) -> Result<bool> {
        let r = self
            .client
            .transact(&plan::own_bridge(bridge, (ids::BRIDGE, "true")))
            .map_err(ovs_err)?;
        let Some(uuid) = r
            .first()
            .and_then(|r| r["rows"].get(0))
            .and_then(|row| read_uuid(&row["_uuid"]))
            .map(String::from)
        else {
            return Ok(false);
        };
        self.client
            .transact(&plan::delete_bridge(&uuid))
            .map_err(ovs_err)?;
        Ok(true)
    }

    pub fn ping(&mut self) -> Result<()> {
        self.client
            .transact(&plan::ping())
            .map(|_| ())
            .map_err(ovs_err)
    }
}

/// An optional integer column: a bare number, or `["set", []]` when empty.
fn read_tag(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|t| u32::try_from(t).ok())
}

/// Ports from the rows of a select of Port (name, _uuid, external_ids).
pub fn found_ports(select_result: &Value) -> Vec<FoundPort> {
    select_result["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|row| {
                    Some(FoundPort {
                        uuid: read_uuid(&row["_uuid"])?.to_string(),
                        name: row["name"].as_str()?.to_string(),
                        external_ids: read_map(&row["external_ids"]),
                        tag: read_tag(&row["tag"]),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Tunnel ports from the rows of a select of Port (name, _uuid, external_ids).
pub fn existing_tunnels(select_result: &Value) -> Vec<Existing> {
    select_result["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|row| {
                    let ids = read_map(&row["external_ids"]);
                    let spec = ids.iter().find(|(k, _)| k == ids::SPEC)?.1.clone();
                    Some(Existing {
                        uuid: read_uuid(&row["_uuid"])?.to_string(),
                        name: row["name"].as_str()?.to_string(),
                        spec,
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}
