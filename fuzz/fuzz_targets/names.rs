//! The name rule shared by client and server.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(name) = std::str::from_utf8(bytes) {
        let _ = bvfs_proto::names::validate_name(name);
    }
});
