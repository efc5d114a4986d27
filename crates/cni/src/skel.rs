//! The dispatcher: turns env + stdin into one call on a [`Plugin`] and its
//! outcome into exactly one JSON document and an exit code. It takes its
//! inputs as parameters so the whole protocol is tested in-process.

use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};

use serde_json::{json, Value};

use crate::config::NetConf;
use crate::env::{Env, NetnsProbe};
use crate::error::{Error, Result};
use crate::result::CniResult;
use crate::version;
use crate::Command;

/// Everything a verb gets: validated env, parsed common config, the raw stdin.
#[derive(Debug, Clone)]
pub struct Context {
    pub env: Env,
    pub conf: NetConf,
}

impl Context {
    pub fn version(&self) -> &str {
        &self.conf.cni_version
    }
}

pub trait Plugin {
    fn add(&self, ctx: &Context) -> Result<CniResult>;
    fn del(&self, ctx: &Context) -> Result<()>;
    fn check(&self, ctx: &Context) -> Result<()>;
    fn status(&self, ctx: &Context) -> Result<()>;
    fn gc(&self, ctx: &Context) -> Result<()>;
}

/// What `main` prints and how it exits.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub stdout: Option<Value>,
    pub exit_code: i32,
}

impl Outcome {
    fn ok(doc: Option<Value>) -> Self {
        Outcome {
            stdout: doc,
            exit_code: 0,
        }
    }
    fn err(e: &Error, version: &str) -> Self {
        Outcome {
            stdout: Some(e.to_json(version)),
            exit_code: 1,
        }
    }
}

/// Runs one invocation. Panics inside the plugin become code 999 rather than a
/// torn stdout, though none are expected.
pub fn dispatch(
    plugin: &dyn Plugin,
    get: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
    probe: &dyn NetnsProbe,
) -> Outcome {
    let mut reply_version = version::LATEST.to_string();
    let run = catch_unwind(AssertUnwindSafe(|| {
        run(plugin, get, stdin, probe, &mut reply_version)
    }));
    match run {
        Ok(Ok(doc)) => Outcome::ok(doc),
        Ok(Err(e)) => Outcome::err(&e, &reply_version),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Outcome::err(
                &Error::unexpected("internal error").with_details(what),
                &reply_version,
            )
        }
    }
}

fn run(
    plugin: &dyn Plugin,
    get: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
    probe: &dyn NetnsProbe,
    reply_version: &mut String,
) -> Result<Option<Value>> {
    let raw_cmd = get("CNI_COMMAND").unwrap_or_default();
    let command = Command::parse(&raw_cmd).ok_or_else(|| {
        Error::env(format!(
            "CNI_COMMAND {raw_cmd:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"
        ))
    })?;

    let mut bytes = Vec::new();
    stdin
        .read_to_end(&mut bytes)
        .map_err(|e| Error::new(crate::error::IO_FAILURE, "cannot read stdin").with_details(e))?;

    if command == Command::Version {
        return Ok(Some(version_reply(&bytes)));
    }

    // The error document should speak the caller's version whenever it is readable.
    let probe_doc: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::decode("network config on stdin is not valid JSON").with_details(e))?;
    if !probe_doc.is_object() {
        return Err(Error::decode(
            "network config on stdin is not a JSON object",
        ));
    }
    if let Some(v) = probe_doc
        .get("cniVersion")
        .and_then(Value::as_str)
        .filter(|v| version::is_supported(v))
    {
        *reply_version = v.to_string();
    }
    let listed: Option<Vec<String>> = probe_doc
        .get("cniVersions")
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    let negotiated = version::negotiate(
        probe_doc.get("cniVersion").and_then(Value::as_str),
        listed.as_deref(),
    )?;
    *reply_version = negotiated.clone();
    version::allows(command, &negotiated)?;

    let env = Env::read(command, get, probe)?;
    let conf = NetConf::parse(&bytes, negotiated)?;
    let ctx = Context { env, conf };
    match command {
        Command::Add => plugin.add(&ctx).map(|r| Some(r.to_json(ctx.version()))),
        Command::Del => plugin.del(&ctx).map(|_| None),
        Command::Check => plugin.check(&ctx).map(|_| None),
        Command::Status => plugin.status(&ctx).map(|_| None),
        Command::Gc => plugin.gc(&ctx).map(|_| None),
        Command::Version => unreachable!("answered above"),
    }
}

fn version_reply(stdin: &[u8]) -> Value {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|d| {
            d.get("cniVersion")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .filter(|v| version::is_supported(v))
        .unwrap_or_else(|| version::LATEST.to_string());
    json!({"cniVersion": asked, "supportedVersions": version::SUPPORTED})
}

/// Who a plugin binary is, for the people who run it by hand.
#[derive(Debug, Clone, Copy)]
pub struct About {
    pub name: &'static str,
    pub version: &'static str,
    /// A few words on what it is, e.g. "CNI plugin for Open vSwitch".
    pub what: &'static str,
}

/// The calling crate's [`About`]: its package name and version, and `what`.
#[macro_export]
macro_rules! about {
    ($what:expr) => {
        $crate::skel::About {
            name: env!("CARGO_PKG_NAME"),
            version: env!("CARGO_PKG_VERSION"),
            what: $what,
        }
    };
}

impl About {
    /// One line, as the reference plugins print when run by hand.
    pub fn line(&self) -> String {
        format!(
            "{} {}: {}; CNI protocol versions supported: {}",
            self.name,
            self.version,
            self.what,
            version::SUPPORTED.join(", ")
        )
    }
}

/// What a person (not a runtime) asked for, answered before the protocol runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ByHand {
    /// `--version`: the about line on stdout, success.
    Version(String),
    /// No CNI_COMMAND: the about line on stderr and a failure, since nothing
    /// a runtime would want has happened.
    NoCommand(String),
}

/// Runtimes always set CNI_COMMAND and pass no arguments, so either of these
/// means a person is at the keyboard.
pub fn by_hand(
    args: &[String],
    get: &dyn Fn(&str) -> Option<String>,
    about: &About,
) -> Option<ByHand> {
    if args.iter().any(|a| a == "--version" || a == "-V") {
        return Some(ByHand::Version(about.line()));
    }
    if get("CNI_COMMAND").is_none_or(|c| c.is_empty()) {
        return Some(ByHand::NoCommand(about.line()));
    }
    None
}

/// The binary's entry point: the process environment and stdin in, the single
/// write to stdout out.
pub fn main(plugin: &dyn Plugin, about: &About) -> std::process::ExitCode {
    use std::io::Write;
    let args: Vec<String> = std::env::args().skip(1).collect();
    match by_hand(&args, &|k| std::env::var(k).ok(), about) {
        Some(ByHand::Version(line)) => {
            let mut out = std::io::stdout().lock();
            return match writeln!(out, "{line}") {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(_) => std::process::ExitCode::from(5),
            };
        }
        Some(ByHand::NoCommand(line)) => {
            eprintln!("{line}");
            return std::process::ExitCode::from(1);
        }
        None => {}
    }
    let outcome = dispatch(
        plugin,
        &|k| std::env::var(k).ok(),
        &mut std::io::stdin().lock(),
        &crate::env::KernelNetnsProbe,
    );
    if let Some(doc) = outcome.stdout {
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{doc}").and_then(|_| out.flush()).is_err() {
            return std::process::ExitCode::from(5);
        }
    }
    std::process::ExitCode::from(outcome.exit_code as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::IpConfig;
    use std::collections::HashMap;

    struct Fake;
    impl Plugin for Fake {
        fn add(&self, ctx: &Context) -> Result<CniResult> {
            if ctx.conf.name == "boom" {
                panic!("kaboom");
            }
            Ok(CniResult {
                ips: vec![IpConfig {
                    address: "10.0.0.2/24".parse().unwrap(),
                    gateway: None,
                    interface: None,
                }],
                ..Default::default()
            })
        }
        fn del(&self, _: &Context) -> Result<()> {
            Ok(())
        }
        fn check(&self, _: &Context) -> Result<()> {
            Ok(())
        }
        fn status(&self, _: &Context) -> Result<()> {
            Err(Error::new(50, "down"))
        }
        fn gc(&self, _: &Context) -> Result<()> {
            Ok(())
        }
    }
    struct AnyNetns;
    impl NetnsProbe for AnyNetns {
        fn probe(&self, _: &std::path::Path) -> Result<()> {
            Ok(())
        }
    }

    fn call(cmd: &str, stdin: &str) -> Outcome {
        let vars: HashMap<&str, &str> = [
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
        ]
        .into_iter()
        .collect();
        dispatch(
            &Fake,
            &|k| vars.get(k).map(|v| v.to_string()),
            &mut stdin.as_bytes(),
            &AnyNetns,
        )
    }

    #[test]
    fn version_answers_all_supported() {
        let out = call("VERSION", "");
        assert_eq!(out.exit_code, 0);
        let doc = out.stdout.unwrap();
        assert_eq!(doc["cniVersion"], "1.1.0");
        assert_eq!(doc["supportedVersions"].as_array().unwrap().len(), 5);
        assert_eq!(
            call("VERSION", r#"{"cniVersion":"0.4.0"}"#).stdout.unwrap()["cniVersion"],
            "0.4.0"
        );
    }

    #[test]
    fn add_result_follows_config_version() {
        for v in version::SUPPORTED {
            let out = call(
                "ADD",
                &format!(r#"{{"cniVersion":"{v}","name":"n","type":"weft"}}"#),
            );
            assert_eq!(out.exit_code, 0, "{v}");
            let doc = out.stdout.unwrap();
            assert_eq!(doc["cniVersion"], *v);
            assert_eq!(doc["ips"][0].get("version").is_some(), v.starts_with('0'));
        }
    }

    #[test]
    fn errors_are_single_documents_with_codes() {
        let cases = [
            ("ADD", "{", 6),
            ("ADD", "[1]", 6),
            ("ADD", "", 6),
            (
                "ADD",
                r#"{"cniVersion":"0.2.0","name":"n","type":"weft"}"#,
                1,
            ),
            (
                "GC",
                r#"{"cniVersion":"1.0.0","name":"n","type":"weft"}"#,
                1,
            ),
            (
                "STATUS",
                r#"{"cniVersion":"0.4.0","name":"n","type":"weft"}"#,
                1,
            ),
            (
                "CHECK",
                r#"{"cniVersion":"0.3.1","name":"n","type":"weft"}"#,
                1,
            ),
            ("NOPE", "{}", 4),
            (
                "STATUS",
                r#"{"cniVersion":"1.1.0","name":"n","type":"weft"}"#,
                50,
            ),
        ];
        for (cmd, stdin, code) in cases {
            let out = call(cmd, stdin);
            assert_eq!(out.exit_code, 1, "{cmd} {stdin}");
            assert_eq!(out.stdout.unwrap()["code"], code, "{cmd} {stdin}");
        }
    }

    #[test]
    fn cni_versions_list_is_honoured() {
        let out = call(
            "ADD",
            r#"{"cniVersions":["0.4.0","1.0.0"],"name":"n","type":"weft"}"#,
        );
        assert_eq!(out.stdout.unwrap()["cniVersion"], "1.0.0");
    }

    #[test]
    fn by_hand_answers_version_and_no_command() {
        let about = About {
            name: "weft",
            version: "9.9.9",
            what: "test plugin",
        };
        let none = |_: &str| None;
        let add = |k: &str| (k == "CNI_COMMAND").then(|| "ADD".to_string());
        let empty = |k: &str| (k == "CNI_COMMAND").then(String::new);
        let line = "weft 9.9.9: test plugin; CNI protocol versions supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0";
        assert_eq!(
            by_hand(&["--version".into()], &add, &about),
            Some(ByHand::Version(line.into()))
        );
        assert_eq!(
            by_hand(&[], &none, &about),
            Some(ByHand::NoCommand(line.into()))
        );
        assert_eq!(
            by_hand(&[], &empty, &about),
            Some(ByHand::NoCommand(line.into()))
        );
        assert_eq!(by_hand(&[], &add, &about), None);
        assert!(!line.contains('\n'));
    }

    #[test]
    fn panic_becomes_999() {
        let out = call(
            "ADD",
            r#"{"cniVersion":"1.0.0","name":"boom","type":"weft"}"#,
        );
        let doc = out.stdout.unwrap();
        assert_eq!(doc["code"], 999);
        assert_eq!(doc["cniVersion"], "1.0.0");
    }
}
