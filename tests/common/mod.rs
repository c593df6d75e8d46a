//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod browser;
pub mod measure;
pub mod pg;
pub mod proxy;
pub mod relay;
