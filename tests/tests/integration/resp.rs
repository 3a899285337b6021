//! The `resp` plugin (in progress).
