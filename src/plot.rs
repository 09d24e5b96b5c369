//! PNG plots of the demo.
