//! `weftctl install`: puts weft's binaries and conflists where a runtime
//! looks for them. It is the DaemonSet's install step and the host install
//! in the README, so the image needs no shell or coreutils.
//!
//! Each file is written beside its destination and renamed over it: a
//! runtime that execs `weft` mid-upgrade gets the old binary or the new one,
//! never a torn one, and a running binary is replaced where `cp` would fail
//! with ETXTBSY. Everything is checked before the first file is written, so
//! a bad conflist or a missing binary installs nothing.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The binaries a node needs: the plugin, its IPAM, and the agent/CLI.
pub const BINARIES: &[&str] = &["weft", "weft-ipam", "weftctl"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    pub from: PathBuf,
    pub to: PathBuf,
    pub mode: u32,
}

/// Works out every copy, refusing the whole install if any source is missing.
pub fn plan(
    from: &Path,
    bin_dir: &Path,
    conf_dir: &Path,
    conflists: &[PathBuf],
) -> Result<Vec<Copy>> {
    let mut copies = Vec::new();
    for name in BINARIES {
        let src = from.join(name);
        if !src.is_file() {
            bail!(
                "{} is missing: install takes weft, weft-ipam and weftctl from one folder (--from)",
                src.display()
            );
        }
        copies.push(Copy {
            from: src,
            to: bin_dir.join(name),
            mode: 0o755,
        });
    }
    for list in conflists {
        let file = list
            .file_name()
            .with_context(|| format!("{} names no file", list.display()))?;
        // The same reading weftctl itself does: a conflist weft would refuse
        // is not installed.
        crate::conf::load(list).with_context(|| format!("not installing {}", list.display()))?;
        copies.push(Copy {
            from: list.clone(),
            to: conf_dir.join(file),
            mode: 0o644,
        });
    }
    Ok(copies)
}

/// Writes one file next to its destination, then renames it into place.
fn put(c: &Copy) -> Result<()> {
    let dir =
        c.to.parent()
            .with_context(|| format!("{} has no folder", c.to.display()))?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = c.to.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.weft-install.{}", std::process::id()));
    let written = (|| -> Result<()> {
        let bytes = fs::read(&c.from).with_context(|| format!("reading {}", c.from.display()))?;
        let mut f = fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&bytes)?;
        f.set_permissions(fs::Permissions::from_mode(c.mode))?;
        f.sync_all()?;
        fs::rename(&tmp, &c.to).with_context(|| format!("renaming into {}", c.to.display()))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

pub fn run(
    from: Option<&Path>,
    bin_dir: &Path,
    conf_dir: &Path,
    conflists: &[PathBuf],
) -> Result<()> {
    let from = match from {
        Some(f) => f.to_path_buf(),
        None => std::env::current_exe()
            .context("finding weftctl's own folder")?
            .parent()
            .context("weftctl's path has no folder")?
            .to_path_buf(),
    };
    for c in plan(&from, bin_dir, conf_dir, conflists)? {
        put(&c)?;
        eprintln!("installed {}", c.to.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_bins(dir: &Path) {
        for b in BINARIES {
            fs::write(dir.join(b), format!("#!/bin/sh\necho {b}\n")).unwrap();
        }
    }

    #[test]
    fn installs_atomically_with_modes_and_replaces() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        fake_bins(src.path());
        let bin = dst.path().join("opt/cni/bin");
        let conf = dst.path().join("etc/cni/net.d");
        fs::create_dir_all(&bin).unwrap();
        fs::write(bin.join("weft"), "old").unwrap();
        // A process still running the old binary keeps its inode.
        let held = fs::File::open(bin.join("weft")).unwrap();
        let list = src.path().join("10-weft.conflist");
        fs::write(
            &list,
            r#"{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"weft","ipam":{"type":"host-local","subnet":"10.1.0.0/24"}}]}"#,
        )
        .unwrap();
        run(Some(src.path()), &bin, &conf, std::slice::from_ref(&list)).unwrap();
        for b in BINARIES {
            let m = fs::metadata(bin.join(b)).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o755, "{b}");
        }
        assert!(fs::read_to_string(bin.join("weft"))
            .unwrap()
            .contains("echo weft"));
        let m = fs::metadata(conf.join("10-weft.conflist")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o644);
        assert_eq!(held.metadata().unwrap().len(), 3);
        let stray: Vec<_> = fs::read_dir(&bin)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with('.'))
            .collect();
        assert!(stray.is_empty(), "{stray:?}");
    }

    #[test]
    fn a_missing_binary_or_bad_conflist_installs_nothing() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        fake_bins(src.path());
        fs::remove_file(src.path().join("weft-ipam")).unwrap();
        let err = run(Some(src.path()), dst.path(), dst.path(), &[]).unwrap_err();
        assert!(err.to_string().contains("weft-ipam is missing"), "{err}");

        fake_bins(src.path());
        let list = src.path().join("bad.conflist");
        fs::write(
            &list,
            r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        let err = run(Some(src.path()), dst.path(), dst.path(), &[list]).unwrap_err();
        assert!(format!("{err:#}").contains("no weft plugin"), "{err:#}");
        assert_eq!(fs::read_dir(dst.path()).unwrap().count(), 0);
    }
}
