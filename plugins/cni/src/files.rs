//! Files the plugins keep for themselves (allocation and VLAN hints): only
//! root may read them, and a reader never sees one half-written.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Writes `bytes` to `path` through a temporary file and a rename, the file
/// 0600 and any directory made on the way 0700.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|_| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_files_and_dirs() {
        let base = std::env::temp_dir().join(format!("weft-files-{}", std::process::id()));
        let path = base.join("a/b/hint");
        write_private(&path, b"4001").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"4001");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&base.join("a/b")), 0o700);
        write_private(&path, b"4002").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"4002");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
