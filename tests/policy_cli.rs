//! End-to-end tests of `appid policy` (being written).
