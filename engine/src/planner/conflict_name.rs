//! Names the planner invents: conflicted copies (DESIGN D7) and the temporary names that break move
//! cycles.

use crate::model::{MAX_NAME_BYTES, NamePolicy, NodeId, NodeKind};

use super::context::ConflictTime;

/// Builds `NAME (conflicted copy from DEVICE YYYY-MM-DD HHMMSS).EXT`, then ` 2`, ` 3`, … before the
/// extension until the name is free.
pub(super) struct ConflictNamer {
    /// ` (conflicted copy from DEVICE YYYY-MM-DD HHMMSS)`
    marker: String,
}

impl ConflictNamer {
    pub(super) fn new(device: &str, time: ConflictTime, policy: NamePolicy) -> ConflictNamer {
        let device = policy.sanitize(device);
        ConflictNamer {
            marker: format!(" (conflicted copy from {device} {time})"),
        }
    }

    /// The first free conflicted name for `name`. Deterministic: the same name and the same answers
    /// from `is_free` give the same result.
    pub(super) fn name(
        &self,
        name: &str,
        kind: NodeKind,
        mut is_free: impl FnMut(&str) -> bool,
    ) -> String {
        let (stem, extension) = split_extension(name, kind);
        (1u32..)
            .map(|attempt| self.candidate(stem, extension, attempt))
            .find(|candidate| is_free(candidate))
            .expect("some attempt number is free")
    }

    fn candidate(&self, stem: &str, extension: &str, attempt: u32) -> String {
        let counter = if attempt > 1 {
            format!(" {attempt}")
        } else {
            String::new()
        };
        let fixed = self.marker.len() + counter.len() + extension.len();
        // Keep the marker and the extension; shorten the stem to fit the name limit.
        let (stem, extension) = if fixed > MAX_NAME_BYTES {
            ("", "")
        } else {
            (floor_char_boundary(stem, MAX_NAME_BYTES - fixed), extension)
        };
        let name = format!("{stem}{}{counter}{extension}", self.marker);
        floor_char_boundary(&name, MAX_NAME_BYTES).to_owned()
    }
}

/// Splits `report.final.pdf` into `report.final` and `.pdf`. Directories and dotfiles (`.profile`)
/// have no extension.
fn split_extension(name: &str, kind: NodeKind) -> (&str, &str) {
    match name.rfind('.') {
        Some(dot) if dot > 0 && kind != NodeKind::Directory => name.split_at(dot),
        _ => (name, ""),
    }
}

fn floor_char_boundary(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Where a node waits for one plan when moves form a cycle (A takes B's name while B takes A's): unique
/// among its siblings because it embeds the node's id, and hidden on Unix.
pub(super) fn park_name(id: NodeId) -> String {
    format!(
        ".bvfs-park-{}",
        uuid::Uuid::from_u128(id.as_u128()).simple()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namer() -> ConflictNamer {
        let time = ConflictTime {
            year: 2025,
            month: 3,
            day: 4,
            hour: 5,
            minute: 6,
            second: 7,
        };
        ConflictNamer::new("laptop", time, NamePolicy::Posix)
    }

    #[test]
    fn conflicted_names_keep_the_extension_and_count_up() {
        let namer = namer();
        assert_eq!(
            namer.name("report.pdf", NodeKind::File, |_| true),
            "report (conflicted copy from laptop 2025-03-04 050607).pdf"
        );
        assert_eq!(
            namer.name("photos.2024", NodeKind::Directory, |_| true),
            "photos.2024 (conflicted copy from laptop 2025-03-04 050607)"
        );
        assert_eq!(
            namer.name(".profile", NodeKind::File, |_| true),
            ".profile (conflicted copy from laptop 2025-03-04 050607)"
        );
        let taken = ["a (conflicted copy from laptop 2025-03-04 050607).txt"];
        assert_eq!(
            namer.name("a.txt", NodeKind::File, |name| !taken.contains(&name)),
            "a (conflicted copy from laptop 2025-03-04 050607) 2.txt"
        );
    }

    #[test]
    fn conflicted_names_fit_the_name_limit() {
        let long = format!("{}.txt", "é".repeat(126));
        let name = namer().name(&long, NodeKind::File, |_| true);
        assert!(name.len() <= MAX_NAME_BYTES, "{} bytes", name.len());
        assert!(name.ends_with("050607).txt"));
    }

    #[test]
    fn device_names_are_made_safe_for_the_platform() {
        let time = ConflictTime::from_unix_utc(0);
        let namer = ConflictNamer::new("my/pc:1", time, NamePolicy::Windows);
        let name = namer.name("a", NodeKind::File, |_| true);
        assert_eq!(name, "a (conflicted copy from my_pc_1 1970-01-01 000000)");
        assert_eq!(NamePolicy::Windows.check(&name), Ok(()));
    }
}
