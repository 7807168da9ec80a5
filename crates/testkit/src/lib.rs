//! Test support shared by rtserve's crates: real peer servers started on loopback for a test.

pub mod redis;
