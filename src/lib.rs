//! The socflow command line's shared pieces, as a library so that the examples use
//! them too: PNG plots with the shipped font ([`plot`]).

pub mod plot;
pub mod plot_paths;
