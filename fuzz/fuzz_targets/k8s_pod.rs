#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| appid_fuzz::k8s_pod(data));
