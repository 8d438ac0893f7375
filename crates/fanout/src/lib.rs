//! Placeholder until the fanout issue lands.
