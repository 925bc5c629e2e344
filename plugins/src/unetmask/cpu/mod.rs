// SPDX-License-Identifier: MPL-2.0

//! The element's CPU path: frame to tensor, network output to mask, mask onto frame.

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
mod bilinear_x86;
pub mod composite;
pub mod postprocess;
pub mod preprocess;
pub mod processor;
pub mod resize;
