//! Transparent capture end to end in network namespaces (being written).
