//! The CNI_* environment: read, validated and typed before anything is touched.

use std::net::IpAddr;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::Command;

/// What CNI_ARGS may carry. Unknown keys are refused unless `IgnoreUnknown` is set,
/// as the reference plugins do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub ignore_unknown: bool,
    /// podman passes static addresses here rather than in runtimeConfig.
    pub ips: Vec<IpAddr>,
    pub mac: Option<Mac>,
    pub k8s_pod_name: Option<String>,
    pub k8s_pod_namespace: Option<String>,
    pub k8s_pod_uid: Option<String>,
    pub k8s_pod_infra_container_id: Option<String>,
}

/// A unicast Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub fn parse(s: &str) -> Option<Self> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let p = parts.next()?;
            if p.len() != 2 {
                return None;
            }
            *byte = u8::from_str_radix(p, 16).ok()?;
        }
        parts.next().is_none().then_some(Mac(out))
    }

    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0
    }
}

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl CniArgs {
    pub fn parse(raw: &str) -> Result<Self> {
        let mut args = CniArgs::default();
        // As libcni's LoadArgs: every `;`-separated piece is exactly one
        // KEY=VALUE, so a trailing `;` or a stray `=` is refused up front
        // rather than half-parsed into a surprise for the IPAM plugin.
        let pairs: Vec<(&str, &str)> = raw
            .split(';')
            .map(|p| match p.split_once('=') {
                Some((k, v)) if !k.is_empty() && !v.contains('=') => Ok((k, v)),
                _ => Err(Error::env(format!(
                    "CNI_ARGS: invalid pair {p:?} in {raw:?}: each ';'-separated pair must be KEY=VALUE"
                ))),
            })
            .collect::<Result<_>>()?;
        // IgnoreUnknown may come after the keys it excuses.
        args.ignore_unknown = pairs.iter().any(|(k, v)| {
            *k == "IgnoreUnknown" && matches!(v.to_ascii_lowercase().as_str(), "1" | "true")
        });
        for (key, value) in pairs {
            match key {
                "IgnoreUnknown" => {}
                "IP" => {
                    for ip in value.split(',').filter(|s| !s.is_empty()) {
                        let ip = ip.parse().map_err(|_| {
                            Error::env(format!("CNI_ARGS: IP={ip:?} is not an IP address"))
                        })?;
                        args.ips.push(ip);
                    }
                }
                "MAC" => {
                    let mac = Mac::parse(value).filter(Mac::is_unicast).ok_or_else(|| {
                        Error::env(format!(
                            "CNI_ARGS: MAC={value:?} is not a unicast MAC address"
                        ))
                    })?;
                    args.mac = Some(mac);
                }
                "K8S_POD_NAME" => args.k8s_pod_name = Some(value.to_string()),
                "K8S_POD_NAMESPACE" => args.k8s_pod_namespace = Some(value.to_string()),
                "K8S_POD_UID" => args.k8s_pod_uid = Some(value.to_string()),
                "K8S_POD_INFRA_CONTAINER_ID" => {
                    args.k8s_pod_infra_container_id = Some(value.to_string())
                }
                other if args.ignore_unknown => {
                    let _ = other;
                }
                other => {
                    return Err(Error::env(format!(
                        "CNI_ARGS: unknown key {other:?} (add IgnoreUnknown=1 to allow it)"
                    )))
                }
            }
        }
        Ok(args)
    }
}

/// Validated CNI_* variables. Fields a verb does not need are `None`.
#[derive(Debug, Clone)]
pub struct Env {
    pub command: Command,
    pub container_id: Option<String>,
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    pub args: CniArgs,
    pub path: Vec<PathBuf>,
}

/// Tells whether a path names a network namespace; the real one asks the kernel.
pub trait NetnsProbe {
    fn probe(&self, path: &std::path::Path) -> Result<()>;
}

/// The spec's rule for container ids.
pub fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The kernel's rule for interface names (dev_valid_name).
pub fn valid_ifname(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty");
    }
    if name.len() > 15 {
        return Err("is longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return Err("is . or ..");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err("contains '/', ':' or whitespace");
    }
    Ok(())
}

impl Env {
    /// Reads the variables a verb needs through `get`, so tests need no process env.
    pub fn read(
        command: Command,
        get: &dyn Fn(&str) -> Option<String>,
        probe: &dyn NetnsProbe,
    ) -> Result<Self> {
        let needs_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
        let require = |k: &str| {
            nonempty(k)
                .ok_or_else(|| Error::env(format!("{k} is required for {}", command.as_str())))
        };

        let container_id = if needs_attachment {
            let id = require("CNI_CONTAINERID")?;
            if !valid_container_id(&id) {
                return Err(Error::env(format!(
                    "CNI_CONTAINERID {id:?} must start with a letter or digit and hold only letters, digits, '_', '.' and '-'"
                )));
            }
            Some(id)
        } else {
            None
        };

        let ifname = if needs_attachment {
            let name = require("CNI_IFNAME")?;
            valid_ifname(&name).map_err(|why| Error::env(format!("CNI_IFNAME {name:?} {why}")))?;
            Some(name)
        } else {
            None
        };

        // DEL must work without a namespace: containerd's second DEL sends none.
        let netns = match command {
            Command::Add | Command::Check => Some(PathBuf::from(require("CNI_NETNS")?)),
            Command::Del => nonempty("CNI_NETNS").map(PathBuf::from),
            _ => None,
        };
        if let (Some(path), true) = (&netns, command != Command::Del) {
            probe.probe(path)?;
        }

        let path: Vec<PathBuf> = nonempty("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        if path.is_empty() && command != Command::Version {
            return Err(Error::env(format!(
                "CNI_PATH is required for {}",
                command.as_str()
            )));
        }

        let args = match nonempty("CNI_ARGS") {
            Some(raw) => CniArgs::parse(&raw)?,
            None => CniArgs::default(),
        };

        Ok(Env {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
        })
    }

    pub fn container_id(&self) -> &str {
        self.container_id.as_deref().unwrap_or_default()
    }

    pub fn ifname(&self) -> &str {
        self.ifname.as_deref().unwrap_or_default()
    }
}

/// Asks the kernel: the path must open, sit on nsfs, and be a *network* namespace.
pub struct KernelNetnsProbe;

impl NetnsProbe for KernelNetnsProbe {
    fn probe(&self, path: &std::path::Path) -> Result<()> {
        use std::os::fd::AsRawFd;
        let shown = path.display();
        let file = std::fs::File::open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::new(
                    crate::error::UNKNOWN_CONTAINER,
                    format!("CNI_NETNS {shown} does not exist"),
                )
            } else {
                Error::env(format!("CNI_NETNS {shown} cannot be opened")).with_details(e)
            }
        })?;
        // NS_GET_NSTYPE answers only for nsfs files, so one ioctl checks both.
        const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
        // SAFETY: the fd is open for the whole call and the ioctl takes no argument.
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if kind != libc::CLONE_NEWNET {
            return Err(Error::env(format!(
                "CNI_NETNS {shown} is not a network namespace"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct AnyNetns;
    impl NetnsProbe for AnyNetns {
        fn probe(&self, _: &std::path::Path) -> Result<()> {
            Ok(())
        }
    }

    fn read(cmd: Command, vars: &[(&str, &str)]) -> Result<Env> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::read(cmd, &|k| map.get(k).cloned(), &AnyNetns)
    }

    const FULL: &[(&str, &str)] = &[
        ("CNI_CONTAINERID", "abc-1.2_3"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
    ];

    #[test]
    fn full_env_parses() {
        let env = read(Command::Add, FULL).unwrap();
        assert_eq!(env.container_id(), "abc-1.2_3");
        assert_eq!(env.path.len(), 2);
    }

    #[test]
    fn missing_or_bad_values_are_code_4() {
        for (key, value) in [
            ("CNI_CONTAINERID", ""),
            ("CNI_CONTAINERID", "-starts-with-dash"),
            ("CNI_CONTAINERID", "has space"),
            ("CNI_IFNAME", "a/b"),
            ("CNI_IFNAME", "a:b"),
            ("CNI_IFNAME", "."),
            ("CNI_IFNAME", "0123456789abcdef"),
            ("CNI_IFNAME", "eth 0"),
            ("CNI_NETNS", ""),
            ("CNI_PATH", ""),
            ("CNI_ARGS", "NOPE=1"),
            ("CNI_ARGS", "IP=300.1.1.1"),
            ("CNI_ARGS", "MAC=01:00:00:00:00:01"),
            ("CNI_ARGS", "garbage"),
            ("CNI_ARGS", "IgnoreUnknown=1;"),
            ("CNI_ARGS", ";IgnoreUnknown=1"),
            ("CNI_ARGS", "IgnoreUnknown=1;;K8S_POD_NAME=a"),
            ("CNI_ARGS", "IgnoreUnknown=1;FOO"),
            ("CNI_ARGS", "IgnoreUnknown=1;=x"),
            ("CNI_ARGS", "IgnoreUnknown=1;A=b=c"),
            ("CNI_ARGS", ";"),
        ] {
            let mut vars: Vec<_> = FULL.iter().filter(|(k, _)| *k != key).cloned().collect();
            vars.push((key, value));
            let err = read(Command::Add, &vars).unwrap_err();
            assert_eq!(err.code, 4, "{key}={value:?}: {err}");
        }
    }

    #[test]
    fn del_does_not_need_netns() {
        let vars: Vec<_> = FULL
            .iter()
            .filter(|(k, _)| *k != "CNI_NETNS")
            .cloned()
            .collect();
        assert!(read(Command::Del, &vars).unwrap().netns.is_none());
    }

    #[test]
    fn cni_args_podman_style() {
        let a = CniArgs::parse(
            "IgnoreUnknown=1;IP=10.1.0.5,fd00::5;MAC=0a:58:0a:01:00:05;K8S_POD_NAME=web;FOO=bar",
        )
        .unwrap();
        assert!(a.ignore_unknown);
        assert_eq!(a.ips.len(), 2);
        assert_eq!(a.mac.unwrap().to_string(), "0a:58:0a:01:00:05");
        assert_eq!(a.k8s_pod_name.as_deref(), Some("web"));
        // IgnoreUnknown placed last still excuses earlier keys.
        assert!(CniArgs::parse("FOO=bar;IgnoreUnknown=true").is_ok());
        assert!(CniArgs::parse("IgnoreUnknown=0;FOO=bar").is_err());
    }

    #[test]
    fn status_and_gc_need_only_path() {
        let env = read(Command::Gc, &[("CNI_PATH", "/x")]).unwrap();
        assert!(env.container_id.is_none());
        assert_eq!(read(Command::Status, &[]).unwrap_err().code, 4);
    }
}
