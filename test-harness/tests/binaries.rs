#![allow(clippy::unwrap_used, clippy::panic)]
//! What a person gets who runs weft's binaries by hand: a version on
//! `--version`, and for the CNI plugins run with no CNI_COMMAND the one-line
//! "about" of the reference plugins on stderr, nothing on stdout (a runtime
//! reads stdout), and a failure.

use std::process::{Command, Stdio};

use weft_harness::runtime::plugin_bin;

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn run(bin: &str, args: &[&str]) -> (bool, String, String) {
    let path = plugin_bin(bin).unwrap();
    assert!(
        path.starts_with(weft_harness::runtime::bin_dir()),
        "{bin} must be ours, found {}",
        path.display()
    );
    let out = Command::new(&path)
        .args(args)
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn plugins_answer_version_and_explain_themselves_without_a_command() {
    for bin in ["weft", "weft-ipam"] {
        let (ok, out, err) = run(bin, &["--version"]);
        assert!(ok, "{bin} --version failed: {err}");
        assert_eq!(out.lines().count(), 1, "{bin} --version: {out:?}");
        assert!(
            out.starts_with(&format!("{bin} {VERSION}: ")),
            "{bin} --version: {out:?}"
        );
        assert!(out.contains("CNI protocol versions supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"));

        let (ok, out, err) = run(bin, &[]);
        assert!(!ok, "{bin} with no CNI_COMMAND must fail");
        assert_eq!(out, "", "{bin} with no CNI_COMMAND wrote stdout");
        assert_eq!(err.lines().count(), 1, "{bin} about: {err:?}");
        assert!(
            err.starts_with(&format!("{bin} {VERSION}: ")) && err.contains("1.1.0"),
            "{bin} about: {err:?}"
        );
    }
}

#[test]
fn tools_answer_version() {
    for bin in ["weftctl", "weft-harness"] {
        let (ok, out, err) = run(bin, &["--version"]);
        assert!(ok, "{bin} --version failed: {err}");
        assert_eq!(out.trim(), format!("{bin} {VERSION}"));
    }
}
