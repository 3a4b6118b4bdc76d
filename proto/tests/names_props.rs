//! Property tests of the name rule: it accepts exactly the names it should.

use bvfs_proto::names::{MAX_NAME_BYTES, NameError, validate_name};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    /// Any string is classified the way the rule is written, and never panics.
    #[test]
    fn classification_matches_the_rule(name in any::<String>()) {
        let expected_valid = !name.is_empty()
            && name != "."
            && name != ".."
            && !name.contains('/')
            && !name.contains('\0')
            && name.len() <= MAX_NAME_BYTES;
        prop_assert_eq!(validate_name(&name).is_ok(), expected_valid);
    }

    /// Names built from safe characters within the limit are always valid.
    #[test]
    fn safe_names_are_valid(name in "[a-zA-Z0-9 ._~ü€-]{1,60}") {
        prop_assume!(name != "." && name != "..");
        prop_assert_eq!(validate_name(&name), Ok(()));
    }

    /// Inserting a slash or NUL anywhere makes a name invalid.
    #[test]
    fn separators_anywhere_are_rejected(prefix in "[a-z]{0,20}", suffix in "[a-z]{0,20}", nul in any::<bool>()) {
        let sep = if nul { '\0' } else { '/' };
        let name = format!("{prefix}{sep}{suffix}");
        let err = validate_name(&name).unwrap_err();
        prop_assert!(matches!(err, NameError::ContainsSlash | NameError::ContainsNul));
    }
}
