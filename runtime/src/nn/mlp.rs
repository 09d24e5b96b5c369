//! MLP (in progress).
