// SPDX-License-Identifier: MPL-2.0

//! The element's GPU path (feature `cuda`): the kernels, their launches and the per-frame flow.

#[cfg(test)]
mod emulation;
#[cfg(feature = "cuda")]
pub mod frames;
#[cfg(feature = "cuda")]
pub mod launch;
pub mod mirror;
#[cfg(feature = "cuda")]
pub mod nvrtc;
