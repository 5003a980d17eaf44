//! agent simulator
