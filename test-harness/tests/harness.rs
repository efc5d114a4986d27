#![allow(clippy::unwrap_used, clippy::panic)]
//! The harness tears down what it creates on every exit path: a panicking
//! test, Ctrl-C, and (through the start-up sweep) SIGKILL.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weft_harness::runtime::bin_dir;
use weft_harness::{require_root, Host};

/// Namespaces, temp dirs and processes that carry `pid`'s harness prefix.
fn leftovers_of(pid: u32) -> Vec<String> {
    let mut found = Vec::new();
    let ns_prefix = format!("wft-{pid}-");
    for e in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().to_string();
        if n.starts_with(&ns_prefix) {
            found.push(format!("netns {n}"));
        }
    }
    let dir_prefix = format!("weft-harness-{pid}-");
    for e in std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().to_string();
        if n.starts_with(&dir_prefix) {
            found.push(format!("dir {n}"));
        }
    }
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&dir_prefix) {
            found.push(format!("process {}", e.file_name().to_string_lossy()));
        }
    }
    found
}

/// Waits until no short-lived child of the killed run (an `ip netns add`
/// half-way, say) is still running: it could create something after the
/// sweep. Long-lived ones (OVS, agents) name the run's dir; the sweep stops them.
fn wait_for_orphans(pid: u32) {
    let (ns, dir) = (format!("wft-{pid}-"), format!("weft-harness-{pid}-"));
    let demo = std::fs::canonicalize(bin_dir().join("weft-harness")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let busy = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                let c = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                let c = String::from_utf8_lossy(&c);
                // A child the demo forked but that had not exec'd yet when
                // the demo was killed still runs the demo's binary, now
                // orphaned (the other tests' demos are our children); once
                // it execs (`ip netns add ...`) it makes what it was for.
                let orphaned_demo = std::fs::read_link(e.path().join("exe"))
                    .is_ok_and(|x| x == demo)
                    && std::fs::read_to_string(e.path().join("stat")).is_ok_and(|st| {
                        st.rsplit(')')
                            .next()
                            .and_then(|r| r.split_whitespace().nth(1))
                            .and_then(|p| p.parse::<u32>().ok())
                            != Some(std::process::id())
                    });
                (c.contains(&ns) && !c.contains(&dir)) || orphaned_demo
            });
        if !busy {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts the demo and returns once it has a host and containers up.
fn demo_in_progress() -> std::process::Child {
    let mut child = Command::new(bin_dir().join("weft-harness"))
        .arg("demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match lines.next() {
            // Three hosts with agents, and containers on them.
            Some(Ok(l)) if l.trim_start().starts_with("ADD on h2") => break,
            Some(Ok(_)) => {}
            _ => panic!("demo ended before its containers were up"),
        }
    }
    // Keep draining so the demo never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    child
}

#[test]
fn cleans_up_after_a_panicking_test() {
    require_root();
    let me = std::process::id();
    let result = std::panic::catch_unwind(|| {
        let _host = Host::new("panics").unwrap();
        panic!("a test failing half-way");
    });
    assert!(result.is_err());
    let left: Vec<String> = leftovers_of(me)
        .into_iter()
        .filter(|l| l.contains("panics"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn cleans_up_on_ctrl_c() {
    require_root();
    let mut demo = demo_in_progress();
    let pid = demo.id();
    assert!(
        !leftovers_of(pid).is_empty(),
        "the demo should have created something"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = demo.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert_eq!(leftovers_of(pid), Vec::<String>::new());
}

#[test]
fn sweep_removes_what_a_killed_run_left() {
    require_root();
    let mut demo = demo_in_progress();
    let pid = demo.id();
    demo.kill().unwrap();
    demo.wait().unwrap();
    wait_for_orphans(pid);
    assert!(
        !leftovers_of(pid).is_empty(),
        "SIGKILL leaves things for the sweep"
    );
    weft_harness::cleanup::sweep_stale();
    assert_eq!(leftovers_of(pid), Vec::<String>::new());
}
