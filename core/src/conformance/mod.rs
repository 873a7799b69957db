//! The op conformance suite every backend runs (being written).
