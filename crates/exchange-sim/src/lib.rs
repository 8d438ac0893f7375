//! Placeholder until the exchange-sim issue lands.
