//! Where files go.

pub mod s3;
