//! Request bodies as serde types: each body is one struct that derives `Deserialize` (which
//! reads it) and `ToSchema` (which documents it), so the document and the parser cannot
//! drift apart.
//!
//! A refused field is a 400 naming the field in `details`, with a message written for people
//! (`url must be a string, not a number`), not serde's. The field deserializers here report
//! such a refusal through serde as a [`FieldError`] encoded in the error's text, and
//! [`from_object`] turns it back into an [`ApiError`]. Fields are read in the order the struct
//! declares them, so the first refused field is the same for every key order in the body.

use serde::de::{self, DeserializeOwned, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::body::kind_of;
use super::ApiError;

/// Separates the field from the message in the text of a field's refusal.
const SEPARATOR: char = '\u{1f}';

/// A 400 naming `field` in `details`.
pub fn field_error(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message).with_details(field)
}

/// A refusal of `field`, carried through serde as its error.
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &str, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.to_owned(),
            message: message.into(),
        }
    }

    /// `field must be {expected}, not {what value is}`.
    pub fn wrong_type(field: &str, expected: &str, got: &Value) -> FieldError {
        FieldError::new(
            field,
            format!("{field} must be {expected}, not {}", kind_of(got)),
        )
    }

    pub fn into_serde<E: de::Error>(self) -> E {
        E::custom(format_args!("{}{SEPARATOR}{}", self.field, self.message))
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> ApiError {
        field_error(&e.field, e.message)
    }
}

/// The field names of a struct that derives `Deserialize`, as serde knows them.
pub fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Fields(Option<&'static [&'static str]>);
    #[derive(Debug)]
    struct Done;
    impl std::fmt::Display for Done {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("done")
        }
    }
    impl std::error::Error for Done {}
    impl de::Error for Done {
        fn custom<M: std::fmt::Display>(_: M) -> Done {
            Done
        }
    }
    impl<'de> de::Deserializer<'de> for &mut Fields {
        type Error = Done;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Done> {
            Err(Done)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Done> {
            self.0 = Some(fields);
            Err(Done)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut fields = Fields(None);
    let _ = T::deserialize(&mut fields);
    fields.0.unwrap_or(&[])
}

/// Refuse fields `T` does not have, naming the first one found: `unknown field "x"; {what}
/// takes a, b, c`.
pub fn only_known_fields<'de, T: Deserialize<'de>>(
    body: &Map<String, Value>,
    what: &str,
) -> Result<(), ApiError> {
    let allowed = fields_of::<T>();
    match body.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(field) => Err(field_error(
            field,
            format!(
                "unknown field {field:?}; {what} takes {}",
                allowed.join(", ")
            ),
        )),
    }
}

/// Read `T` from a JSON object, fields in `T`'s order (the others after them, in the body's
/// order); a refused field is a 400 naming it. The body is read in place: a field that `T`
/// only checks (see [`field::Checked`]) is never copied.
pub fn from_object<T: DeserializeOwned>(body: &Map<String, Value>) -> Result<T, ApiError> {
    let declared = fields_of::<T>();
    let mut entries: Vec<(&str, &Value)> = Vec::with_capacity(body.len());
    for field in declared {
        if let Some(value) = body.get(*field) {
            entries.push((field, value));
        }
    }
    entries.extend(
        body.iter()
            .filter(|(k, _)| !declared.contains(&k.as_str()))
            .map(|(k, v)| (k.as_str(), v)),
    );
    let map = de::value::MapDeserializer::<_, serde_json::Error>::new(entries.into_iter());
    T::deserialize(map).map_err(|e| {
        let text = e.to_string();
        match text.split_once(SEPARATOR) {
            Some((field, message)) => field_error(field, message),
            None => ApiError::bad_request(format!("the request body is not acceptable: {text}")),
        }
    })
}

/// The network policy's verdict on the URL `raw` given as `field`: the URL as stored, or
/// `{field} is not acceptable: {why}`.
pub fn check_url(field: &str, raw: &str, allow_private: bool) -> Result<String, ApiError> {
    crate::delivery::policy::check_url(raw, allow_private)
        .map(|url| url.to_string())
        .map_err(|e| field_error(field, format!("{field} is not acceptable: {e}")))
}

/// Check the URL in `field` against the network policy before the body is read: the policy
/// depends on the settings, which serde does not see, and the URL is the first field of the
/// bodies that have one, so its refusal comes before any other field's. A value that is not
/// a string, or longer than `max_len`, is left to the field's deserializer.
pub fn url_first(
    body: &Map<String, Value>,
    field: &str,
    max_len: usize,
    allow_private: bool,
) -> Result<(), ApiError> {
    match body.get(field) {
        Some(Value::String(raw)) if raw.len() <= max_len => {
            check_url(field, raw, allow_private).map(drop)
        }
        _ => Ok(()),
    }
}

/// Field deserializers for `#[serde(deserialize_with = ...)]`: each takes the field's JSON
/// value as it came and refuses a wrong one with a message naming the field. Absent fields
/// are left to `#[serde(default)]`.
pub mod field {
    use super::*;

    /// The value of a present field, whatever it is.
    pub fn value<'de, D: de::Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }

    /// A string, or `None` for null.
    pub fn string<E: de::Error>(field: &str, value: Value) -> Result<Option<String>, E> {
        match value {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s)),
            other => Err(FieldError::wrong_type(field, "a string", &other).into_serde()),
        }
    }

    /// A boolean, or `None` for null.
    pub fn boolean<E: de::Error>(field: &str, value: Value) -> Result<Option<bool>, E> {
        match value {
            Value::Null => Ok(None),
            Value::Bool(b) => Ok(Some(b)),
            other => Err(FieldError::wrong_type(field, "a boolean", &other).into_serde()),
        }
    }

    /// A JSON object, or `None` for null.
    pub fn object<E: de::Error>(
        field: &str,
        value: Value,
    ) -> Result<Option<Map<String, Value>>, E> {
        match value {
            Value::Null => Ok(None),
            Value::Object(map) => Ok(Some(map)),
            other => Err(FieldError::wrong_type(field, "a JSON object", &other).into_serde()),
        }
    }

    /// A field that is only checked to be null or of its type, never copied: its value is
    /// used where it is in the body (forwarded as it came).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Checked;

    /// Check that a present field is null or a string.
    pub fn checked_string<'de, D: de::Deserializer<'de>>(
        field: &str,
        d: D,
    ) -> Result<Checked, D::Error> {
        match d.deserialize_any(KindOf)? {
            "null" | "a string" => Ok(Checked),
            kind => Err(
                FieldError::new(field, format!("{field} must be a string, not {kind}"))
                    .into_serde(),
            ),
        }
    }

    /// What a JSON value is, as [`kind_of`] says it, read without copying it.
    struct KindOf;

    impl<'de> Visitor<'de> for KindOf {
        type Value = &'static str;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<&'static str, E> {
            Ok("a boolean")
        }
        fn visit_i64<E>(self, _: i64) -> Result<&'static str, E> {
            Ok("a number")
        }
        fn visit_u64<E>(self, _: u64) -> Result<&'static str, E> {
            Ok("a number")
        }
        fn visit_f64<E>(self, _: f64) -> Result<&'static str, E> {
            Ok("a number")
        }
        fn visit_str<E>(self, _: &str) -> Result<&'static str, E> {
            Ok("a string")
        }
        fn visit_unit<E>(self) -> Result<&'static str, E> {
            Ok("null")
        }
        fn visit_none<E>(self) -> Result<&'static str, E> {
            Ok("null")
        }
        fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<&'static str, D::Error> {
            d.deserialize_any(KindOf)
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<&'static str, A::Error> {
            while seq.next_element::<de::IgnoredAny>()?.is_some() {}
            Ok("an array")
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<&'static str, A::Error> {
            while map
                .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
                .is_some()
            {}
            Ok("an object")
        }
    }

    /// Refuse null for a field that may only be left out: `{field} cannot be null; leave it
    /// out to keep it`.
    pub fn not_null<T, E: de::Error>(field: &str, value: Option<T>) -> Result<T, E> {
        value.ok_or_else(|| {
            FieldError::new(
                field,
                format!("{field} cannot be null; leave it out to keep it"),
            )
            .into_serde()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Declared out of alphabetical order, to tell declared order from the body's.
    #[derive(Debug, Default, Deserialize)]
    struct Sample {
        #[serde(default, deserialize_with = "zebra")]
        zebra: Option<String>,
        #[serde(default, deserialize_with = "apple")]
        apple: Option<bool>,
    }

    fn zebra<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        field::string("zebra", field::value(d)?)
    }

    fn apple<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        field::boolean("apple", field::value(d)?)
    }

    fn object(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn serde_names_the_fields_of_a_struct() {
        assert_eq!(fields_of::<Sample>(), &["zebra", "apple"]);
    }

    #[test]
    fn a_refused_field_is_named_with_its_message() {
        let err = from_object::<Sample>(&object(json!({"zebra": 5}))).unwrap_err();
        assert_eq!(err.status, actix_web::http::StatusCode::BAD_REQUEST);
        assert_eq!(err.details, "zebra");
        assert_eq!(err.message, "zebra must be a string, not a number");
    }

    #[test]
    fn fields_are_read_in_declared_order_whatever_the_body_order() {
        for body in [
            json!({"apple": "x", "zebra": 1}),
            json!({"zebra": 1, "apple": "x"}),
        ] {
            assert_eq!(
                from_object::<Sample>(&object(body)).unwrap_err().details,
                "zebra"
            );
        }
    }

    #[test]
    fn absent_and_null_fields_are_none_and_others_are_ignored() {
        let s: Sample = from_object(&object(json!({"zebra": null, "other": 1}))).unwrap();
        assert_eq!(s.zebra, None);
        assert_eq!(s.apple, None);
        let s: Sample = from_object(&object(json!({"zebra": "a", "apple": true}))).unwrap();
        assert_eq!(s.zebra.as_deref(), Some("a"));
        assert_eq!(s.apple, Some(true));
    }

    #[test]
    fn unknown_fields_are_refused_by_name_when_asked() {
        let err =
            only_known_fields::<Sample>(&object(json!({"zebra": "a", "third": 1})), "a sample")
                .unwrap_err();
        assert_eq!(err.details, "third");
        assert_eq!(
            err.message,
            "unknown field \"third\"; a sample takes zebra, apple"
        );
    }
}
