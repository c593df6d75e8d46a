//! Upstream sources. Each owns one upstream connection and its position.

pub mod postgres;
