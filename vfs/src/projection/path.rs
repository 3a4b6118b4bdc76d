//! Paths as ProjFS passes them: relative to the virtualization root, names separated by `\`, the
//! root itself as the empty string.
//!
//! `/` is taken as a separator too (no Windows name contains one, and it lets a harness on Linux
//! speak either way). Empty names (a leading, trailing or doubled separator) are skipped; `.` and
//! `..` are refused: ProjFS never sends them, and resolving them here could leave the root.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::{Errno, VfsResult};

/// A path below the projection's root, as its names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectedPath {
    names: Vec<String>,
}

impl ProjectedPath {
    /// Parses a ProjFS path (`Docs\notes.txt`; `""` is the root).
    pub fn parse(path: &str) -> VfsResult<Self> {
        let mut names = Vec::new();
        for name in path.split(['\\', '/']).filter(|n| !n.is_empty()) {
            if name == "." || name == ".." {
                return Err(Errno::EINVAL);
            }
            names.push(name.to_string());
        }
        Ok(Self { names })
    }

    /// Whether this is the root.
    pub fn is_root(&self) -> bool {
        self.names.is_empty()
    }

    /// The names from the root down.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The names of the parent directory and the last name; `None` for the root.
    pub fn split_last(&self) -> Option<(&[String], &str)> {
        let (last, parent) = self.names.split_last()?;
        Some((parent, last))
    }

    /// This path with `name` appended.
    pub fn join(&self, name: &str) -> Self {
        let mut names = self.names.clone();
        names.push(name.to_string());
        Self { names }
    }

    /// Where this path is on disk below `root` (where ProjFS keeps the files it made full).
    pub fn on_disk(&self, root: &Path) -> PathBuf {
        let mut out = root.to_path_buf();
        out.extend(&self.names);
        out
    }
}

impl fmt::Display for ProjectedPath {
    /// The ProjFS form: names joined by `\`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names.join("\\"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_projfs_paths() {
        let path = ProjectedPath::parse(r"Docs\Sub\notes.txt").unwrap();
        assert_eq!(path.names(), ["Docs", "Sub", "notes.txt"]);
        assert_eq!(path.to_string(), r"Docs\Sub\notes.txt");
        let (parent, last) = path.split_last().unwrap();
        assert_eq!((parent, last), (&path.names()[..2], "notes.txt"));
        assert!(ProjectedPath::parse("").unwrap().is_root());
        assert_eq!(ProjectedPath::parse("").unwrap().split_last(), None);
        assert_eq!(ProjectedPath::parse(r"\a//b\").unwrap().names(), ["a", "b"]);
        assert_eq!(ProjectedPath::parse(r"a\..\b"), Err(Errno::EINVAL));
        assert_eq!(
            ProjectedPath::parse("a")
                .unwrap()
                .join("b")
                .on_disk(Path::new("/r")),
            Path::new("/r/a/b")
        );
    }
}
