//! Element properties set from configuration values, checked against the element's own
//! `ParamSpec` (type, range, enum nicks) first: one source for every range, and a
//! configuration error naming the key where `set_property` would abort the process.

use gst::glib;
use gst::prelude::*;

use crate::error::{Error, Result};

/// Sets `prop` on `element` to `value` (the config key `key` holds it), or says what the
/// element allows.
pub fn set<V>(element: &gst::Element, key: &str, prop: &str, value: V) -> Result<()>
where
    V: Into<glib::Value> + std::fmt::Display,
{
    let shown = value.to_string();
    let value: glib::Value = value.into();
    let pspec = find(element, prop)?;
    allowed(&pspec, &value).map_err(|reason| Error::invalid(key, &shown, reason))?;
    element.set_property_from_value(prop, &value);
    Ok(())
}

/// Sets `prop` from text: an enum by its nick or name, a string as it is, anything else the
/// way `gst-launch-1.0` parses it; then checked like [`set`].
pub fn set_str(element: &gst::Element, key: &str, prop: &str, text: &str) -> Result<()> {
    let pspec = find(element, prop)?;
    let shown = format!("\"{text}\"");
    let value = if let Some(e) = pspec.downcast_ref::<glib::ParamSpecEnum>() {
        let class = e.enum_class();
        class
            .to_value_by_nick(text)
            .or_else(|| class.to_value_by_name(text))
            .ok_or_else(|| {
                let nicks: Vec<&str> = class.values().iter().map(|v| v.nick()).collect();
                Error::invalid(key, &shown, format!("allowed: {}", nicks.join(", ")))
            })?
    } else if pspec.value_type() == glib::Type::STRING {
        text.to_value()
    } else {
        <glib::Value as gst::prelude::GstValueExt>::deserialize_with_pspec(text, &pspec)
            .map_err(|_| Error::invalid(key, &shown, format!("not a {}", pspec.value_type().name())))?
    };
    allowed(&pspec, &value).map_err(|reason| Error::invalid(key, &shown, reason))?;
    element.set_property_from_value(prop, &value);
    Ok(())
}

/// `value` clamped into the range of the element's `u32` property `prop` (for values the
/// runner derives itself, such as threads from the core count, which must never be refused).
pub fn clamp_u32(element: &gst::Element, prop: &str, value: u32) -> u32 {
    match element
        .find_property(prop)
        .as_ref()
        .and_then(|p| p.downcast_ref::<glib::ParamSpecUInt>())
    {
        Some(p) => value.clamp(p.minimum(), p.maximum()),
        None => value,
    }
}

fn find(element: &gst::Element, prop: &str) -> Result<glib::ParamSpec> {
    element.find_property(prop).ok_or_else(|| {
        let factory = element
            .factory()
            .map(|f| f.name().to_string())
            .unwrap_or_default();
        Error::Gst(format!(
            "element '{factory}' has no property '{prop}': install the GStreamer version this build expects"
        ))
    })
}

/// Whether the element accepts `value` for `pspec`; otherwise what it allows. NaN fails every
/// range check on purpose.
fn allowed(pspec: &glib::ParamSpec, value: &glib::Value) -> std::result::Result<(), String> {
    if !value.type_().is_a(pspec.value_type()) {
        return Err(format!("must be a {}", pspec.value_type().name()));
    }
    fn range<T: PartialOrd + std::fmt::Display>(v: T, min: T, max: T) -> std::result::Result<(), String> {
        if v >= min && v <= max {
            Ok(())
        } else {
            Err(format!("allowed: {min}..={max}"))
        }
    }
    macro_rules! numeric {
        ($($spec:ty => $t:ty),*) => {$(
            if let Some(p) = pspec.downcast_ref::<$spec>() {
                let v = value.get::<$t>().map_err(|e| e.to_string())?;
                return range(v, p.minimum(), p.maximum());
            }
        )*};
    }
    numeric!(
        glib::ParamSpecUInt => u32,
        glib::ParamSpecInt => i32,
        glib::ParamSpecUInt64 => u64,
        glib::ParamSpecInt64 => i64,
        glib::ParamSpecDouble => f64,
        glib::ParamSpecFloat => f32
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element(factory: &str) -> gst::Element {
        gst::init().unwrap();
        gst::ElementFactory::make(factory).build().unwrap()
    }

    #[test]
    fn values_outside_the_elements_range_are_config_errors() {
        let q = element("queue");
        // queue's max-size-buffers is a guint, leaky an enum.
        set(&q, "k.max", "max-size-buffers", 7u32).unwrap();
        assert_eq!(q.property::<u32>("max-size-buffers"), 7);
        set_str(&q, "k.leaky", "leaky", "downstream").unwrap();
        let e = set_str(&q, "k.leaky", "leaky", "sideways")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("k.leaky") && e.contains("upstream") && e.contains("downstream"),
            "{e}"
        );
        let v = element("volume");
        let e = set(&v, "k.volume", "volume", 11.0f64).unwrap_err().to_string();
        assert!(e.contains("k.volume") && e.contains("allowed: 0..=10"), "{e}");
        let e = set(&v, "k.volume", "volume", f64::NAN).unwrap_err().to_string();
        assert!(e.contains("allowed"), "NaN is refused: {e}");
        let e = set(&v, "k.volume", "volume", 1u32).unwrap_err().to_string();
        assert!(e.contains("must be a gdouble"), "{e}");
        let e = set(&v, "k.x", "no-such-property", 1u32).unwrap_err().to_string();
        assert!(e.contains("no property 'no-such-property'"), "{e}");
        assert_eq!(clamp_u32(&q, "max-size-buffers", 5), 5);
    }
}
