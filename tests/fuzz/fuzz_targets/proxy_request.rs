//! Fuzz target: request-head parsing and host matching of the egress proxy
//! (`agentbox::proxy::fuzz_check::check`), compiled from the proxy's own
//! source files so the sanitizer build stays small. The modules sit at the
//! crate root, where their `super::` paths resolve as in `src/proxy/`.
#![no_main]
#![allow(dead_code)]

#[path = "../../../src/proxy/addr.rs"]
mod addr;
#[path = "../../../src/proxy/fuzz_check.rs"]
mod fuzz_check;
#[path = "../../../src/proxy/hostmatch.rs"]
mod hostmatch;
#[path = "../../../src/proxy/policy.rs"]
mod policy;
#[path = "../../../src/proxy/refusal.rs"]
mod refusal;
#[path = "../../../src/proxy/request.rs"]
mod request;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzz_check::check(data);
});
