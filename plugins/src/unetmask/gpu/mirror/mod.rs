// SPDX-License-Identifier: MPL-2.0

//! The GPU kernels' parameters and their CPU mirrors.

pub mod blur;
pub mod composite;
pub mod post;
pub mod pre;
