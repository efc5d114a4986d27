//! A throwaway CA with a server and a client certificate, for TLS tests.
//! Made with the openssl command line: nothing here is a secret worth more
//! than the test that makes it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A client certificate from a CA the server does not trust.
    pub stranger_cert: PathBuf,
    pub stranger_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .context("running openssl")?;
    if !out.status.success() {
        bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn ca(dir: &Path, name: &str) -> Result<()> {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ],
    )
}

fn leaf(dir: &Path, ca: &str, name: &str, ext: &str) -> Result<()> {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    )?;
    std::fs::write(dir.join(format!("{name}.ext")), ext)?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ],
    )
}

impl Pki {
    /// `server_ip` goes into the server certificate's subjectAltName.
    pub fn new(dir: &Path, server_ip: &str) -> Result<Self> {
        ca(dir, "ca")?;
        ca(dir, "other-ca")?;
        leaf(
            dir,
            "ca",
            "server",
            &format!("subjectAltName=IP:{server_ip}\nextendedKeyUsage=serverAuth,clientAuth\n"),
        )?;
        leaf(dir, "ca", "client", "extendedKeyUsage=clientAuth\n")?;
        leaf(dir, "other-ca", "stranger", "extendedKeyUsage=clientAuth\n")?;
        let p = |n: &str| dir.join(n);
        Ok(Pki {
            ca: p("ca.pem"),
            server_cert: p("server.pem"),
            server_key: p("server.key"),
            client_cert: p("client.pem"),
            client_key: p("client.key"),
            stranger_cert: p("stranger.pem"),
            stranger_key: p("stranger.key"),
        })
    }
}
