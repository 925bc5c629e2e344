// SPDX-License-Identifier: MPL-2.0

//! The `unetmask` element: public wrapper, registration and property enums.

use gst::glib;
use gst::prelude::*;

// The element's building blocks. `pub` only so that this crate's benches and tests reach
// them; hidden from the documentation, not an API and not kept stable. Applications use the
// element, its meta and `probe`.
#[doc(hidden)]
pub mod cpu;
mod debug;
mod enums;
#[doc(hidden)]
pub mod frame;
mod gpu;
mod imp;
#[doc(hidden)]
pub mod model;
pub mod probe;
mod processor;
mod stages;
#[cfg(test)]
mod test_bytes;

pub use enums::{ActivationChoice, ChannelOrderChoice, LayoutChoice, Mode, ResizeChoice, SettingError};

glib::wrapper! {
    pub struct UnetMask(ObjectSubclass<imp::UnetMask>) @extends gst_base::BaseTransform, gst::Element, gst::Object;
}

impl UnetMask {
    /// Checks the element's current properties the way it checks them when it starts
    /// (device, input size, mean, std), without opening the model: applications validate a
    /// configuration with the element's own rules.
    pub fn check_settings(&self) -> Result<(), SettingError> {
        use gst::subclass::prelude::ObjectSubclassIsExt;
        self.imp().current_engine_config().map(|_| ())
    }
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(Some(plugin), "unetmask", gst::Rank::NONE, UnetMask::static_type())
}
