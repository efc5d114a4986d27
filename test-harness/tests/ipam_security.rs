#![allow(clippy::unwrap_used, clippy::panic)]
//! weft-ipam's etcd security: TLS with client certificates, and users with a
//! password read from a file that only its owner can read.

use std::os::unix::fs::PermissionsExt;

use serde_json::{json, Value};
use weft_harness::etcd::{Etcd, ServerTls};
use weft_harness::fabric::{Fabric, FABRIC_IP};
use weft_harness::host::ScratchDir;
use weft_harness::pki::Pki;
use weft_harness::require_root;
use weft_harness::runtime::spawn_ipam;

fn ipam(fabric: &Fabric, cmd: &str, cid: &str, conf: &Value) -> (bool, Value) {
    let out = spawn_ipam(&fabric.netns, cmd, cid, conf)
        .unwrap()
        .wait_with_output()
        .unwrap();
    (
        out.status.success(),
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
    )
}

fn conf(etcd: Value, dir: &std::path::Path) -> Value {
    json!({"cniVersion": "1.1.0", "name": "sec", "type": "weft-ipam",
           "ipam": {"type": "weft-ipam", "ranges": [[{"subnet": "10.103.0.0/24"}]], "nodeName": "n0",
                    "dataDir": dir.join("hints"), "logFile": dir.join("ipam.log"), "logLevel": "debug", "etcd": etcd}})
}

#[test]
fn tls_with_client_certificates() {
    require_root();
    let fabric = Fabric::new("tls").unwrap();
    let certs = ScratchDir::new("pki").unwrap();
    let pki = Pki::new(&certs.path, FABRIC_IP).unwrap();
    let tls = ServerTls {
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
        ca: pki.ca.clone(),
    };
    let mut etcd = Etcd::start(&fabric.netns, 1, Some(&tls)).unwrap();
    etcd.ctl_tls = Some((
        pki.ca.clone(),
        pki.client_cert.clone(),
        pki.client_key.clone(),
    ));
    let https = etcd.endpoints();
    assert!(https[0].starts_with("https://"));
    let dir = &certs.path;

    let good = conf(
        json!({"endpoints": https, "timeoutMs": 1000,
                           "tls": {"ca": pki.ca, "cert": pki.client_cert, "key": pki.client_key}}),
        dir,
    );
    // A client key others can read is refused before it is used.
    let key = pki.client_key.clone();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, doc) = ipam(&fabric, "ADD", "c1", &good);
    assert!(!ok);
    assert_eq!(doc["code"], 7, "{doc}");
    assert!(doc["msg"].as_str().unwrap().contains("tls.key"), "{doc}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, doc) = ipam(&fabric, "ADD", "c1", &good);
    assert!(ok, "ADD over TLS: {doc}");
    // What weft-ipam writes (its hints, its log) is for root only.
    for f in [dir.join("hints/sec/hints-n0.json"), dir.join("ipam.log")] {
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", f.display());
    }
    let mut check = good.clone();
    check["prevResult"] = doc.clone();
    assert!(ipam(&fabric, "CHECK", "c1", &check).0, "CHECK over TLS");
    assert!(ipam(&fabric, "DEL", "c1", &good).0);

    // Plaintext to a TLS-only etcd: a clear error, nothing reserved.
    let plain = conf(
        json!({"endpoints": [https[0].replace("https://", "http://")], "timeoutMs": 1000}),
        dir,
    );
    let (ok, doc) = ipam(&fabric, "ADD", "c2", &plain);
    eprintln!("plaintext: {doc}");
    assert!(!ok);
    assert_eq!(doc["code"], 11, "{doc}");
    assert!(
        doc["msg"].as_str().unwrap().contains("TLS"),
        "the message should point at TLS: {doc}"
    );

    // No client certificate, or one from a CA etcd does not trust: refused.
    for (name, tls) in [
        ("no client certificate", json!({"ca": pki.ca})),
        (
            "untrusted client certificate",
            json!({"ca": pki.ca, "cert": pki.stranger_cert, "key": pki.stranger_key}),
        ),
    ] {
        let c = conf(
            json!({"endpoints": https, "timeoutMs": 1000, "tls": tls}),
            dir,
        );
        let (ok, doc) = ipam(&fabric, "ADD", "c3", &c);
        eprintln!("{name}: {doc}");
        assert!(!ok, "{name}: {doc}");
        assert!(doc["code"] == 11 || doc["code"] == 112, "{name}: {doc}");
    }
    // Everything that failed reserved nothing: c1 was deleted, so etcd holds no address.
    let keys = etcd
        .ctl(
            &fabric.netns,
            &["get", "--prefix", "/weft/v1/ipam/sec/ips/", "--keys-only"],
        )
        .unwrap();
    assert_eq!(keys.trim(), "", "nothing reserved: {keys}");
}

#[test]
fn users_with_a_password_file() {
    require_root();
    let fabric = Fabric::new("auth").unwrap();
    let etcd = Etcd::start(&fabric.netns, 1, None).unwrap();
    let secret = "s3cret-weft-pw";
    for args in [
        vec!["user", "add", "root", "--new-user-password=rootpw"],
        vec![
            "user",
            "add",
            "weft",
            &format!("--new-user-password={secret}"),
        ],
        vec!["role", "add", "weft"],
        vec![
            "role",
            "grant-permission",
            "weft",
            "readwrite",
            "/weft/",
            "--prefix=true",
        ],
        vec!["user", "grant-role", "weft", "weft"],
        vec!["auth", "enable"],
    ] {
        etcd.ctl(&fabric.netns, &args).unwrap();
    }
    let dir = ScratchDir::new("auth").unwrap();
    let pw = dir.path.join("etcd-password");
    std::fs::write(&pw, format!("{secret}\n")).unwrap();
    // This etcd speaks http://, where a password travels in the clear:
    // refused unless the config says it knows.
    let (ok, doc) = ipam(
        &fabric,
        "ADD",
        "c1",
        &conf(
            json!({"endpoints": etcd.endpoints(), "timeoutMs": 1000, "username": "weft", "passwordFile": pw}),
            &dir.path,
        ),
    );
    assert!(!ok);
    assert_eq!(doc["code"], 7, "{doc}");
    assert!(
        doc["msg"]
            .as_str()
            .unwrap()
            .contains("allowPasswordOverHttp"),
        "{doc}"
    );
    let with_file = |file: &std::path::Path| {
        conf(
            json!({"endpoints": etcd.endpoints(), "timeoutMs": 1000, "username": "weft", "passwordFile": file,
                   "allowPasswordOverHttp": true}),
            &dir.path,
        )
    };

    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, doc) = ipam(&fabric, "ADD", "c1", &with_file(&pw));
    assert!(!ok);
    assert_eq!(
        doc["code"], 7,
        "a password file others can read is refused: {doc}"
    );

    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, doc) = ipam(&fabric, "ADD", "c1", &with_file(&pw));
    assert!(ok, "{doc}");
    assert!(ipam(&fabric, "DEL", "c1", &with_file(&pw)).0);

    let wrong = dir.path.join("wrong-password");
    std::fs::write(&wrong, "nope").unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, doc) = ipam(&fabric, "ADD", "c2", &with_file(&wrong));
    assert!(!ok);
    assert_eq!(
        doc["code"], 112,
        "a wrong password is an authentication error: {doc}"
    );

    let log = std::fs::read_to_string(dir.path.join("ipam.log")).unwrap_or_default();
    assert!(!log.is_empty(), "the debug log was written");
    assert!(
        !log.contains(secret) && !log.contains("nope"),
        "credentials must never be logged"
    );
}
