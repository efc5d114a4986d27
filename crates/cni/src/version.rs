//! CNI spec versions: which we speak, how a config picks one, which verbs each allows.

use crate::error::{Error, Result};
use crate::Command;

/// Oldest first; the last one is what we answer when nothing is asked.
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const LATEST: &str = "1.1.0";

/// A parsed semantic version, ordered so that comparisons follow the spec's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split('.');
        let v = Version(
            parts.next()?.parse().ok()?,
            parts.next()?.parse().ok()?,
            parts.next()?.parse().ok()?,
        );
        parts.next().is_none().then_some(v)
    }

    /// Results before 1.0.0 carry `ips[].version`.
    pub fn legacy_ips(self) -> bool {
        self < Version(1, 0, 0)
    }

    /// Fields the 1.1.0 result added (interface MTU, route table/scope...).
    pub fn has_1_1_fields(self) -> bool {
        self >= Version(1, 1, 0)
    }
}

pub fn is_supported(v: &str) -> bool {
    SUPPORTED.contains(&v)
}

/// Picks the version a config is spoken in. The runtime is supposed to have
/// chosen one already and written it into `cniVersion`; when it only passed the
/// conflist's `cniVersions`, we take the highest one we also speak, as the spec
/// tells runtimes to.
pub fn negotiate(cni_version: Option<&str>, cni_versions: Option<&[String]>) -> Result<String> {
    if let Some(v) = cni_version.filter(|v| !v.is_empty()) {
        if is_supported(v) {
            return Ok(v.to_string());
        }
        return Err(Error::version(format!(
            "cniVersion {v:?} is not supported; supported: {}",
            SUPPORTED.join(", ")
        )));
    }
    if let Some(list) = cni_versions {
        let best = list
            .iter()
            .filter(|v| is_supported(v))
            .max_by_key(|v| Version::parse(v));
        return best.cloned().ok_or_else(|| {
            Error::version(format!(
                "none of cniVersions {list:?} is supported; supported: {}",
                SUPPORTED.join(", ")
            ))
        });
    }
    Err(Error::version(
        "config has no cniVersion (it would mean 0.1.0, which weft does not speak)",
    ))
}

/// The spec introduced CHECK in 0.4.0 and STATUS and GC in 1.1.0.
pub fn allows(cmd: Command, version: &str) -> Result<()> {
    let v = Version::parse(version).unwrap_or(Version(0, 0, 0));
    let since = match cmd {
        Command::Check => Version(0, 4, 0),
        Command::Status | Command::Gc => Version(1, 1, 0),
        _ => return Ok(()),
    };
    if v < since {
        return Err(Error::version(format!(
            "{} needs cniVersion {}.{}.{} or later; the config says {version}",
            cmd.as_str(),
            since.0,
            since.1,
            since.2
        )));
    }
    Ok(())
}

/// Highest version both sides speak, for talking to a delegate that is older than us.
pub fn best_common(theirs: &[String], ceiling: &str) -> Option<String> {
    let ceiling = Version::parse(ceiling)?;
    theirs
        .iter()
        .filter(|v| is_supported(v))
        .filter_map(|v| Some((Version::parse(v)?, v)))
        .filter(|(p, _)| *p <= ceiling)
        .max_by_key(|(p, _)| *p)
        .map(|(_, v)| v.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiate_prefers_explicit_version() {
        assert_eq!(negotiate(Some("0.4.0"), None).unwrap(), "0.4.0");
        assert_eq!(negotiate(Some("0.2.0"), None).unwrap_err().code, 1);
        assert_eq!(negotiate(None, None).unwrap_err().code, 1);
    }

    #[test]
    fn negotiate_takes_highest_common_from_list() {
        let list = vec!["0.3.1".to_string(), "1.0.0".into(), "9.9.9".into()];
        assert_eq!(negotiate(None, Some(&list)).unwrap(), "1.0.0");
        let none = vec!["2.0.0".to_string()];
        assert_eq!(negotiate(None, Some(&none)).unwrap_err().code, 1);
    }

    #[test]
    fn verbs_have_minimum_versions() {
        assert!(allows(Command::Check, "0.3.1").is_err());
        assert!(allows(Command::Check, "0.4.0").is_ok());
        assert_eq!(allows(Command::Gc, "1.0.0").unwrap_err().code, 1);
        assert_eq!(allows(Command::Status, "0.4.0").unwrap_err().code, 1);
        assert!(allows(Command::Status, "1.1.0").is_ok());
        assert!(allows(Command::Add, "0.3.0").is_ok());
    }

    #[test]
    fn version_order_is_numeric() {
        assert!(Version::parse("0.10.0").unwrap() > Version::parse("0.4.0").unwrap());
        assert!(Version::parse("1.0").is_none());
        assert!(Version::parse("1.0.0.0").is_none());
    }

    #[test]
    fn best_common_respects_ceiling() {
        let theirs: Vec<String> = ["0.3.1", "0.4.0", "1.0.0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(best_common(&theirs, "1.1.0").as_deref(), Some("1.0.0"));
        assert_eq!(best_common(&theirs, "0.4.0").as_deref(), Some("0.4.0"));
    }
}
