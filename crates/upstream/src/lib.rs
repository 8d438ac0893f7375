//! Placeholder until the upstream issue lands.
