//! Fuzz target: request-head parsing and host matching of the egress proxy
//! (`egress_policy::fuzz_check::check`), from the crate the proxy itself
//! uses, so the sanitizer build stays small.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    egress_policy::fuzz_check::check(data);
});
