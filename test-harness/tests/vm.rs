#![allow(clippy::unwrap_used, clippy::panic)]
//! The VM runner (`weft-harness vm`) itself, run as a user runs it: its exit
//! code is the guest command's, and nothing of a run is left behind (the
//! QEMU process, the run's folder) after a failing command or a Ctrl-C; a
//! guest that does not boot in time is a loud failure with the console.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weft_harness::require_root;
use weft_harness::runtime::plugin_bin;

fn src() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn vm() -> Command {
    let mut c = Command::new(plugin_bin("weft-harness").unwrap());
    c.current_dir(src()).arg("vm");
    c
}

/// What a run of the harness with pid `pid` could have left: its folders in
/// the temp dir, and QEMU processes that use them.
fn leftovers(pid: u32) -> Vec<String> {
    let mark = format!("weft-harness-{pid}-");
    let mut left: Vec<String> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(&mark))
        .collect();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.starts_with("qemu-system") && cmdline.contains(&mark) {
            left.push(format!(
                "process {}: {cmdline}",
                e.file_name().to_string_lossy()
            ));
        }
    }
    left
}

#[test]
fn a_failing_command_gives_its_exit_code_and_leaves_nothing() {
    require_root();
    let out = vm()
        .args([
            "--",
            "test -d /sys/module/openvswitch && echo kernel-datapath; exit 7",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("kernel-datapath"), "{stdout}");
    // The child is gone, so its pid names what it made.
    let pid = out_pid(&out);
    assert_eq!(leftovers(pid), Vec::<String>::new());
}

/// The runner prints its own pid nowhere, so the tests ask it to: the guest
/// command echoes nothing of it, but the run folder's name carries it.
fn out_pid(out: &std::process::Output) -> u32 {
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("weft-harness vm: pid "))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid line in: {stderr}"))
}

#[test]
fn ctrl_c_stops_the_guest_and_leaves_nothing() {
    require_root();
    let mut child = vm()
        .args(["--", "echo guest-ready; sleep 600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let t0 = Instant::now();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("guest-ready") => break,
            Some(_) => {}
            None => panic!("the runner ended before its guest was ready"),
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "no guest after 300 s"
        );
    }
    assert!(!leftovers(pid).is_empty(), "a running guest should be seen");
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert_eq!(leftovers(pid), Vec::<String>::new());
}

#[test]
fn a_guest_that_does_not_boot_in_time_fails_with_its_console() {
    require_root();
    let out = vm()
        .args(["--tcg", "--boot-within", "1", "--", "true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("did not boot within 1s"), "{stderr}");
    assert!(stderr.contains("its console:"), "{stderr}");
    assert_eq!(leftovers(out_pid(&out)), Vec::<String>::new());
}
