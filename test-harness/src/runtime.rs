//! Running CNI plugins exactly as a runtime does: exec with CNI_* env and the
//! config on stdin, inside the host's netns; parse the result or the error.
//! [`Network`] plays libcni for a conflist: versions, prevResult, chaining.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::host::{Container, Host};
use crate::netns::Netns;

/// Where our binaries are: $WEFT_BIN_DIR, else next to the running executable
/// (cargo puts tests in target/<profile>/deps).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("WEFT_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Debian's containernetworking-plugins.
pub const REFERENCE_DIR: &str = "/usr/lib/cni";

pub fn cni_path() -> String {
    format!("{}:{REFERENCE_DIR}", bin_dir().display())
}

pub fn plugin_bin(name: &str) -> Result<PathBuf> {
    for dir in [bin_dir(), PathBuf::from(REFERENCE_DIR)] {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("plugin {name} not found in {} or {REFERENCE_DIR}; build the workspace first (cargo build --release)", bin_dir().display())
}

/// What one exec of a plugin gave back.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
    pub json: Option<Value>,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn code(&self) -> Option<u64> {
        if self.success {
            return None;
        }
        self.json.as_ref().and_then(|j| j["code"].as_u64())
    }

    /// The result document, or an error naming the CNI code and message.
    pub fn result(&self) -> Result<Value> {
        if self.success {
            return Ok(self.json.clone().unwrap_or(Value::Null));
        }
        bail!(
            "plugin failed: {} (stderr: {})",
            self.stdout.trim(),
            self.stderr.trim()
        )
    }
}

/// Execs `bin` in `host` with exactly `env` and `stdin`.
pub fn exec_raw(host: &Netns, bin: &Path, env: &[(&str, String)], stdin: &[u8]) -> Result<Outcome> {
    let mut cmd = host.command(&bin.to_string_lossy())?;
    cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("exec {}", bin.display()))?;
    if let Some(mut pipe) = child.stdin.take() {
        let _ = pipe.write_all(stdin);
    }
    let out = child.wait_with_output()?;
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let json = serde_json::from_str(stdout.trim()).ok();
    Ok(Outcome {
        success: out.status.success(),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        json,
        elapsed,
    })
}

/// One plugin call's CNI parameters.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: Option<&'a Path>,
    pub ifname: &'a str,
    pub args: Option<&'a str>,
}

impl Call<'_> {
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("CNI_COMMAND", self.command.to_string()),
            ("CNI_CONTAINERID", self.container_id.to_string()),
            (
                "CNI_NETNS",
                self.netns
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            ),
            ("CNI_IFNAME", self.ifname.to_string()),
            ("CNI_PATH", cni_path()),
        ];
        if let Some(a) = self.args {
            env.push(("CNI_ARGS", a.to_string()));
        }
        env
    }
}

pub fn exec(host: &Netns, plugin: &str, call: &Call, config: &Value) -> Result<Outcome> {
    exec_raw(
        host,
        &plugin_bin(plugin)?,
        &call.env(),
        config.to_string().as_bytes(),
    )
}

/// A conflist, run the way libcni runs one.
#[derive(Debug, Clone)]
pub struct Network {
    pub conflist: Value,
    pub version: String,
}

/// Extra inputs for one attachment.
#[derive(Debug, Clone, Default)]
pub struct Attach<'a> {
    pub args: Option<&'a str>,
    pub runtime_config: Option<Value>,
}

const OUR_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

impl Network {
    pub fn new(conflist: Value) -> Result<Self> {
        // Spec: the runtime picks the highest of cniVersions it supports.
        let version = match conflist.get("cniVersions").and_then(Value::as_array) {
            Some(list) => list
                .iter()
                .filter_map(Value::as_str)
                .filter(|v| OUR_VERSIONS.contains(v))
                .max_by_key(|v| {
                    v.split('.')
                        .map(|p| p.parse::<u32>().unwrap_or(0))
                        .collect::<Vec<_>>()
                })
                .map(String::from)
                .context("no common version in cniVersions")?,
            None => conflist["cniVersion"]
                .as_str()
                .context("conflist has no cniVersion")?
                .to_string(),
        };
        Ok(Network { conflist, version })
    }

    pub fn name(&self) -> &str {
        self.conflist["name"].as_str().unwrap_or_default()
    }

    fn plugins(&self) -> Vec<Value> {
        self.conflist["plugins"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn plugin_conf(
        &self,
        plugin: &Value,
        prev: Option<&Value>,
        rc: Option<&Value>,
        extra: &Value,
    ) -> Value {
        let mut conf = plugin.clone();
        conf["cniVersion"] = self.version.clone().into();
        conf["name"] = self.conflist["name"].clone();
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        if let (Some(rc), Some(caps)) = (rc, plugin.get("capabilities").and_then(Value::as_object))
        {
            let picked: serde_json::Map<String, Value> = rc
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(k, _)| caps.get(*k) == Some(&Value::Bool(true)))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            if !picked.is_empty() {
                conf["runtimeConfig"] = Value::Object(picked);
            }
        }
        if let Some(m) = extra.as_object() {
            for (k, v) in m {
                conf[k] = v.clone();
            }
        }
        conf
    }

    fn run_chain(
        &self,
        host: &Host,
        command: &str,
        call: &Call,
        prev: Option<Value>,
        opts: &Attach,
        reverse: bool,
    ) -> Result<(Option<Value>, Vec<Outcome>)> {
        let mut plugins = self.plugins();
        if reverse {
            plugins.reverse();
        }
        let mut prev = prev;
        let mut outs = Vec::new();
        for p in &plugins {
            let ty = p["type"].as_str().context("plugin without type")?;
            let conf =
                self.plugin_conf(p, prev.as_ref(), opts.runtime_config.as_ref(), &Value::Null);
            let call = Call {
                command,
                ..call.clone()
            };
            let out = exec(&host.netns, ty, &call, &conf)?;
            if !out.success {
                outs.push(out);
                return Ok((None, outs));
            }
            if command == "ADD" {
                prev = out.json.clone();
            }
            outs.push(out);
        }
        Ok((prev, outs))
    }

    /// Starts the first plugin of the chain for `call` and returns at once,
    /// so a test can kill it where a runtime's timeout would.
    pub fn spawn_first(&self, host: &Host, call: &Call) -> Result<std::process::Child> {
        let p = self
            .plugins()
            .into_iter()
            .next()
            .context("empty conflist")?;
        let ty = p["type"].as_str().context("plugin without type")?;
        let conf = self.plugin_conf(&p, None, None, &Value::Null);
        let mut cmd = host.netns.command(&plugin_bin(ty)?.to_string_lossy())?;
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(call.env())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().context("starting the plugin")?;
        if let Some(mut pipe) = child.stdin.take() {
            let _ = pipe.write_all(conf.to_string().as_bytes());
        }
        Ok(child)
    }

    /// ADD through the chain; Ok(Err(outcome)) when a plugin refused.
    pub fn add(
        &self,
        host: &Host,
        c: &Container,
        ifname: &str,
        opts: &Attach,
    ) -> Result<Result<Value, Outcome>> {
        Ok(self.add_timed(host, c, ifname, opts)?.0)
    }

    /// ADD, with the time the chain's plugins took, as a runtime would see it.
    pub fn add_timed(
        &self,
        host: &Host,
        c: &Container,
        ifname: &str,
        opts: &Attach,
    ) -> Result<(Result<Value, Outcome>, Duration)> {
        let call = Call {
            command: "ADD",
            container_id: &c.id,
            netns: Some(c.path()),
            ifname,
            args: opts.args,
        };
        let (result, outs) = self.run_chain(host, "ADD", &call, None, opts, false)?;
        let took = outs.iter().map(|o| o.elapsed).sum();
        match result {
            Some(r) => Ok((Ok(r), took)),
            None => Ok((Err(outs.into_iter().last().context("no plugin ran")?), took)),
        }
    }

    pub fn del(
        &self,
        host: &Host,
        container_id: &str,
        netns: Option<&Path>,
        ifname: &str,
        prev: Option<&Value>,
    ) -> Result<Outcome> {
        let call = Call {
            command: "DEL",
            container_id,
            netns,
            ifname,
            args: None,
        };
        let (_, outs) =
            self.run_chain(host, "DEL", &call, prev.cloned(), &Attach::default(), true)?;
        let took = outs.iter().map(|o| o.elapsed).sum();
        let mut out = outs
            .into_iter()
            .find(|o| !o.success)
            .unwrap_or_else(success);
        out.elapsed = took;
        Ok(out)
    }

    pub fn check(&self, host: &Host, c: &Container, ifname: &str, prev: &Value) -> Result<Outcome> {
        let call = Call {
            command: "CHECK",
            container_id: &c.id,
            netns: Some(c.path()),
            ifname,
            args: None,
        };
        let (_, outs) = self.run_chain(
            host,
            "CHECK",
            &call,
            Some(prev.clone()),
            &Attach::default(),
            false,
        )?;
        outs.into_iter()
            .find(|o| !o.success)
            .map(Ok)
            .unwrap_or_else(|| Ok(success()))
    }

    pub fn gc(&self, host: &Host, valid: &[(&str, &str)]) -> Result<Outcome> {
        let list: Vec<Value> = valid
            .iter()
            .map(|(c, i)| json!({"containerID": c, "ifname": i}))
            .collect();
        let extra = json!({"cni.dev/valid-attachments": list});
        self.simple(host, "GC", &extra)
    }

    pub fn status(&self, host: &Host) -> Result<Outcome> {
        self.simple(host, "STATUS", &Value::Null)
    }

    fn simple(&self, host: &Host, command: &str, extra: &Value) -> Result<Outcome> {
        for p in self.plugins() {
            let ty = p["type"].as_str().context("plugin without type")?;
            let conf = self.plugin_conf(&p, None, None, extra);
            let env = vec![
                ("CNI_COMMAND", command.to_string()),
                ("CNI_PATH", cni_path()),
            ];
            let out = exec_raw(
                &host.netns,
                &plugin_bin(ty)?,
                &env,
                conf.to_string().as_bytes(),
            )?;
            if !out.success {
                return Ok(out);
            }
        }
        Ok(success())
    }
}

fn success() -> Outcome {
    Outcome {
        success: true,
        stdout: String::new(),
        stderr: String::new(),
        json: None,
        elapsed: Duration::ZERO,
    }
}

/// A single-plugin weft conflist for `host`, with host-local IPAM in `subnet`.
pub fn weft_network(host: &Host, name: &str, version: &str, subnet: &str) -> Network {
    let conflist = json!({
        "cniVersion": version, "name": name,
        "plugins": [weft_plugin(host, subnet)]
    });
    Network {
        conflist,
        version: version.to_string(),
    }
}

pub fn weft_plugin(host: &Host, subnet: &str) -> Value {
    json!({"type": "weft", "bridge": "br-weft", "ovsdbSocket": host.db_sock(), "logLevel": "debug",
           "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}], "dataDir": host.ipam_dir()}})
}

/// An OVSDB map as `ovs-vsctl --format=json` prints it, as key -> value.
pub fn flatten_ids(v: &Value) -> std::collections::BTreeMap<String, String> {
    v[1].as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|kv| Some((kv[0].as_str()?.to_string(), kv[1].as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// The first address of a CNI result, without its prefix length.
pub fn first_address(result: &Value) -> Option<String> {
    let cidr = result["ips"][0]["address"].as_str()?;
    Some(cidr.split('/').next().unwrap_or(cidr).to_string())
}

/// A weft conflist whose addresses come from weft-ipam on `etcd` endpoints.
pub fn weft_ipam_network(
    host: &Host,
    name: &str,
    version: &str,
    subnet: &str,
    endpoints: &[String],
) -> Network {
    let mut plugin = weft_plugin(host, subnet);
    plugin["ipam"] = weft_ipam_conf(host, subnet, endpoints);
    Network {
        conflist: json!({"cniVersion": version, "name": name, "plugins": [plugin]}),
        version: version.to_string(),
    }
}

pub fn weft_ipam_conf(host: &Host, subnet: &str, endpoints: &[String]) -> Value {
    json!({"type": "weft-ipam", "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}],
           "nodeName": host.label, "dataDir": host.ipam_dir(), "etcd": {"endpoints": endpoints, "timeoutMs": 1000 * crate::time_scale()}})
}

/// Starts weft-ipam in `ns` as weft would (its own netns as CNI_NETNS) and
/// returns at once, so tests can run many side by side.
pub fn spawn_ipam(
    ns: &Netns,
    command: &str,
    container_id: &str,
    config: &Value,
) -> Result<std::process::Child> {
    let mut child = ns
        .command(&plugin_bin("weft-ipam")?.to_string_lossy())?
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", "/proc/self/ns/net")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/nonexistent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting weft-ipam")?;
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(config.to_string().as_bytes())?;
    }
    Ok(child)
}

/// The address in a weft-ipam reservation key (`.../ips/4-0a000005`).
pub fn addr_of_key(key: &str) -> Option<std::net::IpAddr> {
    let (family, hex) = key.rsplit('/').next()?.split_once('-')?;
    let v = u128::from_str_radix(hex, 16).ok()?;
    Some(match family {
        "4" => std::net::IpAddr::V4(std::net::Ipv4Addr::from(v as u32)),
        _ => std::net::IpAddr::V6(std::net::Ipv6Addr::from(v)),
    })
}
