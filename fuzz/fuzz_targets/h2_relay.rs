#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| appid_fuzz::h2_relay(data));
