// SPDX-License-Identifier: MPL-2.0

//! The model: ONNX Runtime sessions and providers, the detected contract, the devices.

pub mod cache;
pub mod contract;
#[cfg(feature = "cuda")]
pub mod device;
pub mod engine;
pub mod spin;
