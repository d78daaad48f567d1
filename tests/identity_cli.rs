//! End-to-end tests of the identity commands (being written).
