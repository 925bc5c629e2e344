// SPDX-License-Identifier: MPL-2.0

//! The element's GPU path (feature `cuda`): the kernels' parameters, NVRTC, the launches,
//! the page-locked staging of frames and the per-frame flow. The kernels' CPU mirrors and
//! their host emulation are tests only.

#[cfg(test)]
mod emulation;
#[cfg(feature = "cuda")]
pub mod frames;
#[cfg(feature = "cuda")]
pub mod launch;
#[cfg(test)]
mod mirror;
#[cfg(feature = "cuda")]
pub mod nvrtc;
#[cfg(any(feature = "cuda", test))]
pub mod params;
#[cfg(feature = "cuda")]
pub mod staging;
