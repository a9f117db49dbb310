//! Arbitrary bytes given to the inspection behind `neurostore inspect` and `verify`: a
//! typed error or a report, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = neurostore::snapshot::inspect(data) {
        assert!(info.bytes <= data.len() as u64);
    }
});
