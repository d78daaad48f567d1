//! Scanner reports (placeholder; being written).
