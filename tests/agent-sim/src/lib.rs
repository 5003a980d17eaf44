//! agent simulator

pub mod api;
pub mod backend;
