//! lowbit-cpu: the CPU backend (PLACEHOLDER: being written).
