//! The field names a struct's derived `Deserialize` accepts, read from the derive itself.
//!
//! serde hands a struct's field list to `Deserializer::deserialize_struct`; a deserializer
//! that records that argument and stops learns exactly the names the struct takes (renames
//! applied, skipped fields left out). Validators ask this instead of keeping their own
//! table of which field belongs to which check kind.

use serde::de::{self, DeserializeOwned, Visitor};
use std::fmt;

/// Why the probe stopped: always, once it has the names (or the type is not a struct).
#[derive(Debug)]
struct Stop;

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("field probe")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Stop
    }
}

struct Probe<'a>(&'a mut &'static [&'static str]);

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Stop> {
        *self.0 = fields;
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// The names `T` takes; empty for types that are not plain structs (a struct with a
/// `#[serde(flatten)]` field deserializes as a map and has no fixed list).
pub(crate) fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Sample {
        plain: u8,
        #[serde(rename = "type")]
        renamed: String,
        #[serde(skip)]
        skipped: bool,
    }

    #[test]
    fn the_names_are_the_derives_own() {
        assert_eq!(fields_of::<Sample>(), ["plain", "type"]);
        assert!(fields_of::<String>().is_empty());
    }
}
