//! End-to-end tests of the authority (being written).
