//! Everything impure the planner needs, passed in as data: who we are, what time it is, what the
//! platform can name, how many deletes are too many, and which local files hold their bytes.

use std::fmt;

use crate::model::{NamePolicy, NodeId, NodeIdSet};

/// The planner's inputs besides the three trees and the changed ids.
#[derive(Clone, Copy)]
pub struct PlanContext<'a> {
    /// This device's name, as it appears in conflicted-copy names.
    pub device: &'a str,
    /// The moment conflicted copies made by this plan are stamped with.
    pub conflict_time: ConflictTime,
    /// What local names can be.
    pub names: NamePolicy,
    /// When a plan deletes too much to run without asking.
    pub brake: DeleteBrake,
    /// How many nodes the namespace holds (REMOTE), for the brake's fraction rule.
    pub namespace_size: u64,
    /// Which local nodes keep their bytes on this device.
    pub residency: &'a dyn Residency,
    /// Deletes the user confirmed: the brake lets these through.
    pub confirmed_deletes: &'a NodeIdSet,
}

impl fmt::Debug for PlanContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlanContext")
            .field("device", &self.device)
            .field("conflict_time", &self.conflict_time)
            .field("names", &self.names)
            .field("brake", &self.brake)
            .field("namespace_size", &self.namespace_size)
            .field("confirmed_deletes", &self.confirmed_deletes.len())
            .finish_non_exhaustive()
    }
}

/// Whether a local node keeps its bytes on this device.
///
/// A remote content change to a placeholder only updates its metadata (the next read fetches the new
/// chunks); a hydrated or pinned file also fetches the new content, so it stays readable offline.
pub trait Residency {
    /// True for hydrated and pinned files, and for directories whose new files should arrive hydrated
    /// (pinned directories).
    fn is_resident(&self, id: NodeId) -> bool;
}

/// Every local file is a placeholder.
pub struct NothingResident;

impl Residency for NothingResident {
    fn is_resident(&self, _: NodeId) -> bool {
        false
    }
}

/// Exactly the ids in the set keep their bytes.
impl Residency for NodeIdSet {
    fn is_resident(&self, id: NodeId) -> bool {
        self.contains(&id)
    }
}

/// The bulk-delete brake (DESIGN D8): a plan deleting more than this is held until the user confirms.
///
/// While it is engaged, the plan's deletes (and only the operations that depend on them) are held and
/// reported; everything else still runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeleteBrake {
    /// Engage when the plan deletes more than this many nodes.
    pub max_deletes: u64,
    /// Engage when the plan deletes more than this fraction of the namespace …
    pub max_fraction: f64,
    /// … and at least this many nodes, so that deleting 2 files out of 3 does not ask for confirmation.
    pub fraction_floor: u64,
}

impl Default for DeleteBrake {
    /// More than 500 deletes, or more than half of the namespace once at least 10 nodes go.
    fn default() -> DeleteBrake {
        DeleteBrake {
            max_deletes: 500,
            max_fraction: 0.5,
            fraction_floor: 10,
        }
    }
}

impl DeleteBrake {
    /// A brake that never engages.
    pub const OFF: DeleteBrake = DeleteBrake {
        max_deletes: u64::MAX,
        max_fraction: f64::INFINITY,
        fraction_floor: u64::MAX,
    };

    /// Whether `deletes` deletes in a namespace of `namespace_size` nodes engage the brake.
    pub fn engages(&self, deletes: u64, namespace_size: u64) -> bool {
        deletes > self.max_deletes
            || (deletes >= self.fraction_floor
                && deletes as f64 > self.max_fraction * namespace_size as f64)
    }
}

/// A calendar time, shown as `YYYY-MM-DD HHMMSS` in conflicted-copy names.
///
/// The engine breaks down the clock (in the user's time zone, or UTC) before planning, so the planner
/// stays free of clocks and time zones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConflictTime {
    pub year: i32,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl ConflictTime {
    /// The UTC calendar time of a Unix timestamp in seconds.
    pub fn from_unix_utc(seconds: i64) -> ConflictTime {
        let days = seconds.div_euclid(86_400);
        let of_day = seconds.rem_euclid(86_400);
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z.rem_euclid(146_097);
        let year_of_era =
            (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let mp = (5 * day_of_year + 2) / 153;
        let day = day_of_year - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        ConflictTime {
            year: year as i32,
            month: month as u8,
            day: day as u8,
            hour: (of_day / 3600) as u8,
            minute: (of_day / 60 % 60) as u8,
            second: (of_day % 60) as u8,
        }
    }
}

impl fmt::Display for ConflictTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}{:02}{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_time_breaks_down_unix_time() {
        assert_eq!(
            ConflictTime::from_unix_utc(0).to_string(),
            "1970-01-01 000000"
        );
        assert_eq!(
            ConflictTime::from_unix_utc(951_782_400 + 3_723).to_string(),
            "2000-02-29 010203"
        );
        assert_eq!(
            ConflictTime::from_unix_utc(1_767_225_599).to_string(),
            "2025-12-31 235959"
        );
    }

    #[test]
    fn the_brake_thresholds() {
        let brake = DeleteBrake::default();
        assert!(!brake.engages(500, 1_000_000));
        assert!(brake.engages(501, 1_000_000));
        assert!(
            !brake.engages(2, 3),
            "small namespaces do not ask for every delete"
        );
        assert!(brake.engages(11, 20));
        assert!(!brake.engages(10, 20));
        assert!(!DeleteBrake::OFF.engages(u64::MAX - 1, 1));
    }
}
