#![allow(clippy::unwrap_used, clippy::panic)]
//! The node image, built and used as a cluster would: the Containerfile
//! built by podman on a Debian base imported from a debootstrapped root (no
//! image registry is needed), then the DaemonSet's own install command run in
//! it against a host folder, then the installed binaries run on the host.
//!
//! podman runs with its own storage in a harness temp dir (vfs: it works on
//! any filesystem, even inside the fresh-machine check's root), so nothing
//! is left in the machine's image store.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weft_harness::cluster::Cluster;
use weft_harness::require_root;
use weft_harness::runtime::bin_dir;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Self {
        weft_harness::cleanup::init();
        let dir = tempfile::Builder::new()
            .prefix(&format!("weft-harness-{}-image-", std::process::id()))
            .tempdir()
            .unwrap();
        Podman { dir }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(self.dir.path().join("storage"))
            .arg("--runroot")
            .arg(self.dir.path().join("run"))
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"])
            // crun refuses hosts with cgroup controllers on both hierarchies
            // (this development machine's); runc takes any.
            .args(["--runtime", "runc"])
            .stdin(Stdio::null());
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        self.ok_with(args, |_| {})
    }

    fn ok_with(&self, args: &[&str], extra: impl FnOnce(&mut Command)) -> String {
        let mut c = self.cmd();
        c.args(args);
        extra(&mut c);
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "podman {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `podman run` as a kubelet would start the pod's container: no network,
    /// and rlimits no higher than this process has (podman's defaults for
    /// root are above what an unprivileged sandbox may set).
    fn run(&self, mounts: &[(&Path, &str)], image: &str, command: &[String]) -> String {
        let mut args: Vec<String> = vec![
            "run".into(),
            "--rm".into(),
            "--network".into(),
            "none".into(),
            "--ulimit".into(),
            "nofile=1024:1024".into(),
            "--ulimit".into(),
            "nproc=1024:1024".into(),
        ];
        for (host, guest) in mounts {
            args.push("-v".into());
            args.push(format!("{}:{guest}", host.display()));
        }
        args.push("--entrypoint".into());
        args.push(command[0].clone());
        args.push(image.into());
        args.extend(command[1..].iter().cloned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ok(&refs)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd().args(["rm", "-af"]).output();
        let _ = self.cmd().args(["rmi", "-af"]).output();
    }
}

/// The install container's `command:` from the DaemonSet, which is a YAML
/// flow sequence of plain strings and so also JSON.
fn daemonset_install_command(yaml: &str) -> Vec<String> {
    let after = &yaml[yaml
        .find("- name: install")
        .expect("an install init container")..];
    let line = after
        .lines()
        .find_map(|l| l.trim().strip_prefix("command:"))
        .expect("the install container's command");
    serde_json::from_str(line.trim()).expect("command is a list of strings")
}

/// The conflist the DaemonSet's ConfigMap carries.
fn daemonset_conflist(yaml: &str) -> String {
    let start = yaml
        .find("10-weft.conflist: |")
        .expect("the ConfigMap's conflist");
    let body = &yaml[start..];
    let body = &body[body.find('\n').unwrap() + 1..body.find("\n---").unwrap()];
    body.lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// podman with the image built twice: on the imported Debian base as
/// `localhost/weft:test`, and on `scratch` as `localhost/weft:scratch`. None
/// when podman is missing, said loudly.
fn built() -> Option<Podman> {
    require_root();
    if Command::new("podman").arg("--version").output().is_err() {
        eprintln!(
            "\n!!!!! SKIPPED: podman is not installed, so the Containerfile is NOT tested. \
             ./dev.sh test installs it. !!!!!\n"
        );
        return None;
    }
    let pm = Podman::new();
    let base = Command::new("bash")
        .arg(repo().join("scripts/debian-root.sh"))
        .output()
        .unwrap();
    assert!(
        base.status.success(),
        "making the Debian root: {}",
        String::from_utf8_lossy(&base.stderr)
    );
    let root = String::from_utf8(base.stdout).unwrap().trim().to_string();

    // The base: a debootstrapped Debian 12, imported as a registry's
    // debian:bookworm-slim would be pulled.
    let mut tar = Command::new("tar")
        .args(["-C", &root, "-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let tar_out = tar.stdout.take().unwrap();
    pm.ok_with(&["import", "-", "localhost/weft-test-base:bookworm"], |c| {
        c.stdin(tar_out);
    });
    assert!(tar.wait().unwrap().success());

    // The context ./dev.sh image stages: the three static binaries.
    let ctx = pm.dir.path().join("context");
    std::fs::create_dir(&ctx).unwrap();
    for b in ["weft", "weft-ipam", "weftctl"] {
        std::fs::copy(bin_dir().join(b), ctx.join(b)).unwrap();
    }
    let containerfile = repo().join("Containerfile");
    let cf = containerfile.to_str().unwrap();
    let ctx_s = ctx.to_str().unwrap();
    for (base, tag) in [
        ("localhost/weft-test-base:bookworm", "localhost/weft:test"),
        ("scratch", "localhost/weft:scratch"),
    ] {
        pm.ok(&[
            "build",
            "--network",
            "none",
            "--build-arg",
            &format!("BASE_IMAGE={base}"),
            "-f",
            cf,
            "-t",
            tag,
            ctx_s,
        ]);
    }
    Some(pm)
}

#[test]
fn image_builds_offline_and_its_install_step_puts_working_binaries_on_the_host() {
    let Some(pm) = built() else { return };
    // The image carries the three binaries and nothing of ours beside them.
    let listing = pm.run(
        &[],
        "localhost/weft:test",
        &["/bin/ls".into(), "/weft/bin".into()],
    );
    let mut have: Vec<&str> = listing.split_whitespace().collect();
    have.sort();
    assert_eq!(have, ["weft", "weft-ipam", "weftctl"]);
    for tag in ["localhost/weft:test", "localhost/weft:scratch"] {
        let v = pm.run(&[], tag, &["/weft/bin/weftctl".into(), "--version".into()]);
        assert_eq!(v.trim(), format!("weftctl {}", env!("CARGO_PKG_VERSION")));
    }

    // The DaemonSet's install step, with its volumes as the kubelet mounts them.
    let yaml = std::fs::read_to_string(repo().join("conf/kubernetes/weft-daemonset.yaml")).unwrap();
    let command = daemonset_install_command(&yaml);
    let node = pm.dir.path().join("node");
    let (bin, netd, config) = (
        node.join("opt/cni/bin"),
        node.join("etc/cni/net.d"),
        node.join("configmap"),
    );
    for d in [&bin, &netd, &config] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(config.join("10-weft.conflist"), daemonset_conflist(&yaml)).unwrap();
    // An older weft already on the node, as in an upgrade.
    std::fs::write(bin.join("weft"), "old").unwrap();
    pm.run(
        &[
            (&bin, "/host/opt/cni/bin"),
            (&netd, "/host/etc/cni/net.d"),
            (&config, "/config:ro"),
        ],
        "localhost/weft:test",
        &command,
    );

    // What landed runs on the host.
    use std::os::unix::fs::PermissionsExt;
    for b in ["weft", "weft-ipam", "weftctl"] {
        let m = std::fs::metadata(bin.join(b)).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o755, "{b}");
    }
    let conflist: Value =
        serde_json::from_slice(&std::fs::read(netd.join("10-weft.conflist")).unwrap()).unwrap();
    assert_eq!(conflist["plugins"][0]["type"], "weft");
    let help = Command::new(bin.join("weftctl"))
        .args(["agent", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--ttl"));
    for plugin in ["weft", "weft-ipam"] {
        let out = Command::new(bin.join(plugin))
            .env_clear()
            .env("CNI_COMMAND", "VERSION")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{plugin} VERSION");
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            doc["supportedVersions"]
                .as_array()
                .unwrap()
                .contains(&"1.0.0".into()),
            "{plugin}: {doc}"
        );
    }
}

/// The DaemonSet's agent container, as the kubelet would run it: the image's
/// weftctl agent, privileged in the node's network namespace, with the
/// node's OVS socket and the conflist mounted. It must hold the node's
/// registration, build the tunnel back to a host that joins, and give the
/// registration up when stopped.
#[test]
fn agent_from_the_image_keeps_a_simulated_host_in_step() {
    // Declared before podman, so the agent's container is stopped (podman's
    // drop) before the hosts and etcd it talks to go away.
    let c = Cluster::new("image", 2).unwrap();
    let Some(pm) = built() else { return };
    let subnet = "10.252.0.0/16";
    let p0 = c.place(0, "blue", subnet, &json!({}), false).unwrap();
    let conf = c
        .write_conf(0, &c.network(0, "blue", subnet, json!({})))
        .unwrap();
    let h0 = &c.hosts[0];
    let dir = h0.dir.path.display().to_string();
    let id = pm.ok(&[
        "run",
        "-d",
        "--privileged",
        "--network",
        &format!("ns:{}", h0.netns.path.display()),
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "-v",
        &format!("{dir}:{dir}"),
        "--entrypoint",
        "/weft/bin/weftctl",
        "localhost/weft:test",
        "agent",
        "--ttl",
        "30",
        "--conf",
        conf.to_str().unwrap(),
    ]);
    let id = id.trim().to_string();
    // For the harness's start-up sweep, should this run be killed outright.
    let pid = pm.ok(&["inspect", "--format", "{{.State.Pid}}", &id]);
    std::fs::write(
        h0.dir.path.join(format!("agent-{}.pid", pid.trim())),
        pid.trim(),
    )
    .unwrap();

    let leased = |want: bool| {
        let out = c.weftctl(
            1,
            &c.network(1, "blue", subnet, json!({})),
            &["nodes", "--json"],
        );
        let doc: Value = out
            .ok()
            .and_then(|o| serde_json::from_slice(&o.stdout).ok())
            .unwrap_or(Value::Null);
        let held = doc
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["name"] == h0.label.as_str() && n["lease"].as_i64().unwrap_or(0) != 0);
        held == want
    };
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !f() {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{what} within 15 s; agent log:\n{}",
                pm.ok(&["logs", &id])
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait("the image's agent holds h0 under a lease", &|| leased(true));

    // h1 joins: its own ADD builds its tunnel to h0, the agent builds h0's back.
    let p1 = c.place(1, "blue", subnet, &json!({}), false).unwrap();
    c.wait_tunnels(0, 1, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e:#}; agent log:\n{}", pm.ok(&["logs", &id])));
    assert!(
        p0.c.netns.ping(&p1.ip),
        "h0 -> h1 through the agent's tunnel"
    );
    assert!(p1.c.netns.ping(&p0.ip), "h1 -> h0");

    // SIGTERM, as the kubelet stops a container: the lease is revoked at
    // once, long before its 30 s would run out.
    pm.ok(&["stop", "-t", "10", &id]);
    wait("the stopped agent gives h0's lease up", &|| leased(false));
}
