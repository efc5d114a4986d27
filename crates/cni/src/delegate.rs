//! Running another plugin (IPAM, mostly) the way a runtime would: found in
//! CNI_PATH, same environment with CNI_COMMAND set, config on stdin, one JSON
//! document back. Delegates may be older than us: when one refuses our
//! version, we ask it which it speaks and try once more in the best common one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Output, Stdio};

use serde_json::Value;

use crate::error::{self, Error, Result};
use crate::version;
use crate::Command;

/// Finds `plugin` in CNI_PATH. Names with a path separator are refused so a
/// config cannot point us at an arbitrary binary.
pub fn find(plugin: &str, path: &[PathBuf]) -> Result<PathBuf> {
    if plugin.is_empty() || plugin.contains('/') || plugin == "." || plugin == ".." {
        return Err(Error::config(format!(
            "plugin type {plugin:?} is not a plain binary name"
        )));
    }
    path.iter()
        .map(|dir| dir.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::new(
                error::PLUGIN_NOT_FOUND,
                format!("plugin {plugin:?} not found in CNI_PATH"),
            )
            .with_details(
                path.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":"),
            )
        })
}

/// A delegate started in the background, so the caller can work while it runs.
/// Spawning happens on a helper thread too: posix_spawn holds the caller
/// until the child has exec'd, which on a busy host is a millisecond.
pub struct Pending {
    run: std::thread::JoinHandle<Result<Output>>,
    bin: PathBuf,
    cmd: Command,
    config: Value,
}

fn run_to_end(bin: &Path, cmd: Command, stdin: &[u8]) -> Result<Output> {
    let mut child = Process::new(bin)
        .env("CNI_COMMAND", cmd.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::new(
                error::DELEGATE_FAILURE,
                format!("cannot run {}", bin.display()),
            )
            .with_details(e)
        })?;
    if let Some(mut pipe) = child.stdin.take() {
        // A delegate that exits without reading its stdin is not our problem to report here.
        let _ = pipe.write_all(stdin);
    }
    child.wait_with_output().map_err(|e| {
        Error::new(error::DELEGATE_FAILURE, "waiting for delegate failed").with_details(e)
    })
}

/// Starts `bin` with `config` on stdin.
pub fn spawn(bin: &Path, cmd: Command, config: &Value) -> Result<Pending> {
    let (owned_bin, stdin) = (bin.to_path_buf(), config.to_string().into_bytes());
    let run = std::thread::Builder::new()
        .name("delegate".into())
        .spawn(move || run_to_end(&owned_bin, cmd, &stdin))
        .map_err(|e| Error::unexpected("cannot start delegate thread").with_details(e))?;
    Ok(Pending {
        run,
        bin: bin.to_path_buf(),
        cmd,
        config: config.clone(),
    })
}

impl Pending {
    /// Waits for the delegate and returns its JSON output (None when it printed nothing).
    pub fn wait(self) -> Result<Option<Value>> {
        let out = self
            .run
            .join()
            .unwrap_or_else(|_| Err(Error::unexpected("delegate thread panicked")))?;
        match parse_output(&self.bin, &out) {
            Err(e) if e.code == error::INCOMPATIBLE_VERSION => {
                let ours = self.config["cniVersion"]
                    .as_str()
                    .unwrap_or(version::LATEST)
                    .to_string();
                let Some(common) = supported_by(&self.bin)?
                    .and_then(|theirs| version::best_common(&theirs, &ours))
                    .filter(|v| *v != ours)
                else {
                    return Err(e);
                };
                tracing::debug!(bin = %self.bin.display(), from = %ours, to = %common, "delegate is older; retrying");
                let mut config = self.config;
                config["cniVersion"] = common.into();
                parse_output(
                    &self.bin,
                    &run_to_end(&self.bin, self.cmd, config.to_string().as_bytes())?,
                )
            }
            other => other,
        }
    }
}

fn parse_output(bin: &Path, out: &Output) -> Result<Option<Value>> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let parsed: Option<Value> = if stdout.trim().is_empty() {
        None
    } else {
        serde_json::from_str(&stdout).ok()
    };
    if out.status.success() {
        return match (parsed, stdout.trim().is_empty()) {
            (Some(v), _) => Ok(Some(v)),
            (None, true) => Ok(None),
            (None, false) => Err(Error::new(
                error::DELEGATE_FAILURE,
                format!("{} printed something that is not JSON", bin.display()),
            )
            .with_details(stdout.trim())),
        };
    }
    // A delegate's CNI error passes through unchanged, code and all.
    if let Some(err) = parsed.and_then(|v| serde_json::from_value::<Error>(v).ok()) {
        return Err(err);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(Error::new(
        error::DELEGATE_FAILURE,
        format!("{} failed ({})", bin.display(), out.status),
    )
    .with_details(
        format!("{} {}", stdout.trim(), stderr.trim())
            .trim()
            .to_string(),
    ))
}

/// Runs VERSION; None when the delegate does not answer it sensibly.
pub fn supported_by(bin: &Path) -> Result<Option<Vec<String>>> {
    let out = run_to_end(bin, Command::Version, br#"{"cniVersion":"0.3.0"}"#)?;
    let doc: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    Ok(doc.and_then(|d| serde_json::from_value(d["supportedVersions"].clone()).ok()))
}

/// Runs `cmd` to completion.
pub fn exec(bin: &Path, cmd: Command, config: &Value) -> Result<Option<Value>> {
    spawn(bin, cmd, config)?.wait()
}

/// STATUS and GC exist from 1.1.0 on; a delegate that predates them is skipped,
/// since asking it would only produce an "unknown command" error.
pub fn exec_if_supported(bin: &Path, cmd: Command, config: &Value) -> Result<bool> {
    let knows_verb = supported_by(bin)?
        .map(|v| {
            v.iter()
                .any(|s| version::Version::parse(s) >= version::Version::parse("1.1.0"))
        })
        .unwrap_or(false);
    if !knows_verb {
        tracing::debug!(bin = %bin.display(), verb = cmd.as_str(), "delegate predates this verb; skipped");
        return Ok(false);
    }
    exec(bin, cmd, config)?;
    Ok(true)
}
