//! End-to-end tests of `appid proxy` (being written).
