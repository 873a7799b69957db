//! lowbit-models: model adapters.
