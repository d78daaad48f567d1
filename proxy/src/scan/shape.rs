//! Typed reading of JSON that tolerates wrong shapes and says where they were.
//!
//! A scanner report can be hundreds of megabytes, almost all of it text we do
//! not need (descriptions, CVSS vectors, references). Reading it into a
//! `serde_json::Value` would hold all of that in memory, two to three times
//! over. Deriving `Deserialize` for the few fields we need keeps memory small,
//! but serde then fails on the first wrong type with only a line and column,
//! not the field.
//!
//! [`Slot<T>`] gets both: every field we read is a `Slot`, which holds either
//! the value in the expected shape or the [`Kind`] of JSON value found
//! instead. Deserializing never fails on a wrong type; the walk over the
//! typed tree afterwards knows the path (`Results[3].Vulnerabilities[0].Severity`)
//! and turns a [`Slot::Wrong`] into an error that names it. Everything we do
//! not name is skipped by serde without being stored.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The kind of a JSON value, for "expected X, found Y" messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Null => "null",
            Kind::Bool => "a boolean",
            Kind::Number => "a number",
            Kind::String => "a string",
            Kind::Array => "an array",
            Kind::Object => "an object",
        })
    }
}

/// A JSON value read as `T`, or the kind of value that was there instead.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Slot<T> {
    Got(T),
    Wrong(Kind),
}

/// A type a [`Slot`] can hold: says which JSON shapes it accepts.
///
/// Every method has a default that rejects its shape (and, for arrays and
/// objects, skips the contents without storing them), so an implementation
/// only overrides the shapes it accepts.
pub(crate) trait Shaped: Sized {
    /// What the type expects, for messages: "a string", "an object".
    const EXPECTED: &'static str;

    fn from_str(_: &str) -> Option<Self> {
        None
    }
    fn from_u64(_: u64) -> Option<Self> {
        None
    }
    fn from_i64(_: i64) -> Option<Self> {
        None
    }
    fn from_f64(_: f64) -> Option<Self> {
        None
    }
    fn from_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Option<Self>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

impl Shaped for String {
    const EXPECTED: &'static str = "a string";
    fn from_str(s: &str) -> Option<Self> {
        Some(s.to_owned())
    }
}

/// A JSON number kept as written, for version checks and messages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Num {
    U(u64),
    I(i64),
    F(f64),
}

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Num::U(n) => write!(f, "{n}"),
            Num::I(n) => write!(f, "{n}"),
            // `{:?}` keeps the `.0` of `2.0`, which is not the integer 2.
            Num::F(n) => write!(f, "{n:?}"),
        }
    }
}

impl Shaped for Num {
    const EXPECTED: &'static str = "a number";
    fn from_u64(n: u64) -> Option<Self> {
        Some(Num::U(n))
    }
    fn from_i64(n: i64) -> Option<Self> {
        Some(Num::I(n))
    }
    fn from_f64(n: f64) -> Option<Self> {
        Some(Num::F(n))
    }
}

/// A JSON array, each element read into its own [`Slot`].
impl<T: Shaped> Shaped for Vec<Slot<T>> {
    const EXPECTED: &'static str = "an array";
    fn from_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Option<Self>, A::Error> {
        // No `with_capacity(size_hint)`: the hint comes from the input.
        let mut out = Vec::new();
        while let Some(item) = seq.next_element::<Slot<T>>()? {
            out.push(item);
        }
        Ok(Some(out))
    }
}

/// Implements [`Shaped`] for a struct that derives `Deserialize` and whose
/// fields are all `Option<Slot<_>>` (so reading it never fails on a type).
macro_rules! shaped_object {
    ($($ty:ty),+ $(,)?) => {$(
        impl $crate::scan::shape::Shaped for $ty {
            const EXPECTED: &'static str = "an object";
            fn from_map<'de, A: ::serde::de::MapAccess<'de>>(
                map: A,
            ) -> Result<Option<Self>, A::Error> {
                <$ty as ::serde::Deserialize>::deserialize(
                    ::serde::de::value::MapAccessDeserializer::new(map),
                )
                .map(Some)
            }
        }
    )+};
}
pub(crate) use shaped_object;

impl<'de, T: Shaped> Deserialize<'de> for Slot<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SlotVisitor(PhantomData))
    }
}

struct SlotVisitor<T>(PhantomData<T>);

fn got<T>(v: Option<T>, found: Kind) -> Slot<T> {
    v.map_or(Slot::Wrong(found), Slot::Got)
}

impl<'de, T: Shaped> Visitor<'de> for SlotVisitor<T> {
    type Value = Slot<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTED)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Slot<T>, E> {
        Ok(Slot::Wrong(Kind::Bool))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Slot<T>, E> {
        Ok(got(T::from_u64(n), Kind::Number))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Slot<T>, E> {
        Ok(got(T::from_i64(n), Kind::Number))
    }
    fn visit_f64<E>(self, n: f64) -> Result<Slot<T>, E> {
        Ok(got(T::from_f64(n), Kind::Number))
    }
    fn visit_str<E>(self, s: &str) -> Result<Slot<T>, E> {
        Ok(got(T::from_str(s), Kind::String))
    }
    fn visit_unit<E>(self) -> Result<Slot<T>, E> {
        Ok(Slot::Wrong(Kind::Null))
    }
    fn visit_none<E>(self) -> Result<Slot<T>, E> {
        Ok(Slot::Wrong(Kind::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Slot<T>, A::Error> {
        Ok(got(T::from_seq(seq)?, Kind::Array))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Slot<T>, A::Error> {
        Ok(got(T::from_map(map)?, Kind::Object))
    }
}
