//! The generation engine: sampling and the decode loop.
