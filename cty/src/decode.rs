//! Reading configuration values encoded the way Nomad encodes them: go-cty's
//! msgpack encoding of an HCL-decoded object.
//!
//! What arrives (see the plugin protocol notes, §5.4–5.5): every attribute of
//! an object is present, absent ones as `nil`; numbers come as integers,
//! float64 or *decimal strings* (`"0.1"`); a `Block` is a map or `nil`, and
//! jobspec/HCL1 rewriting means a block may also come as a list of maps;
//! `map(...)` options are declared `list(map(...))`. Everything here treats
//! every key as nullable and names the offending field in errors.

use std::collections::BTreeMap;

use rmpv::Value;

/// A configuration problem, tied to the field it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The bytes are not a msgpack-encoded object.
    #[error("configuration is not a valid msgpack object: {reason}")]
    Malformed {
        /// What was wrong.
        reason: String,
    },
    /// A field has a value the driver cannot accept.
    #[error("invalid `{field}`: {problem}")]
    Invalid {
        /// Dotted path of the field (`session_config.memory_limit_mb`).
        field: String,
        /// What is wrong with it.
        problem: String,
    },
}

impl ConfigError {
    /// Builds an [`ConfigError::Invalid`] for `field`.
    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// The field the error names, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Malformed { .. } => None,
            ConfigError::Invalid { field, .. } => Some(field),
        }
    }
}

/// Decodes msgpack bytes into a value. Empty bytes mean "no configuration"
/// and decode as `nil`.
pub fn decode(bytes: &[u8]) -> Result<Value, ConfigError> {
    if bytes.is_empty() {
        return Ok(Value::Nil);
    }
    let mut reader = bytes;
    let value = rmpv::decode::read_value(&mut reader).map_err(|e| ConfigError::Malformed {
        reason: e.to_string(),
    })?;
    if !reader.is_empty() {
        return Err(ConfigError::Malformed {
            reason: format!("{} unexpected trailing bytes", reader.len()),
        });
    }
    Ok(value)
}

/// A cty object: a msgpack map with string keys, read by field name.
#[derive(Debug, Clone)]
pub struct CtyObject<'a> {
    /// Dotted path of this object ("" for the root).
    path: String,
    entries: &'a [(Value, Value)],
}

const NO_ENTRIES: &[(Value, Value)] = &[];

impl<'a> CtyObject<'a> {
    /// Reads the root object. `nil` (no configuration) is an empty object.
    pub fn root(value: &'a Value) -> Result<Self, ConfigError> {
        match value {
            Value::Nil => Ok(CtyObject {
                path: String::new(),
                entries: NO_ENTRIES,
            }),
            Value::Map(entries) => Ok(CtyObject {
                path: String::new(),
                entries,
            }),
            other => Err(ConfigError::Malformed {
                reason: format!("expected an object at the top level, got {}", kind(other)),
            }),
        }
    }

    /// The dotted path of `key` inside this object.
    pub fn field_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{}", self.path, key)
        }
    }

    /// The value of `key`, or `None` when it is absent or `nil`.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
            .filter(|v| !v.is_nil())
    }

    /// A `string` attribute.
    pub fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        self.get(key)
            .map(|v| as_string(v, &self.field_path(key)))
            .transpose()
    }

    /// A `bool` attribute.
    pub fn bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        self.get(key)
            .map(|v| match v {
                Value::Boolean(b) => Ok(*b),
                other => Err(wrong_type(&self.field_path(key), "a bool", other)),
            })
            .transpose()
    }

    /// A `number` attribute that must hold a whole number.
    pub fn integer(&self, key: &str) -> Result<Option<i64>, ConfigError> {
        self.get(key)
            .map(|v| as_integer(v, &self.field_path(key)))
            .transpose()
    }

    /// A `list(string)` attribute.
    pub fn string_list(&self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let field = self.field_path(key);
        let Value::Array(items) = value else {
            return Err(wrong_type(&field, "a list of strings", value));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| as_string(item, &format!("{field}[{i}]")))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// A map option declared `list(map(string))` (how the jobspec delivers
    /// `env = { … }`): the maps are merged in order, later keys winning. A
    /// plain map is accepted too, for JSON job submissions that bypass the
    /// rewrite.
    pub fn string_map(&self, key: &str) -> Result<Option<BTreeMap<String, String>>, ConfigError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let field = self.field_path(key);
        let maps: Vec<&Value> = match value {
            Value::Array(items) => items.iter().collect(),
            Value::Map(_) => vec![value],
            other => return Err(wrong_type(&field, "a map of strings", other)),
        };
        let mut merged = BTreeMap::new();
        for map in maps {
            let Value::Map(entries) = map else {
                return Err(wrong_type(&field, "a map of strings", map));
            };
            for (k, v) in entries {
                let name = k
                    .as_str()
                    .ok_or_else(|| ConfigError::invalid(&field, "map keys must be strings"))?;
                let value = as_string(v, &format!("{field}.{name}"))?;
                merged.insert(name.to_owned(), value);
            }
        }
        Ok(Some(merged))
    }

    /// A nested block declared as `Block`: a map, `nil` when absent, or (after
    /// HCL1/jobspec rewriting) a list holding zero or one map.
    pub fn block(&self, key: &str) -> Result<Option<CtyObject<'a>>, ConfigError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let path = self.field_path(key);
        let entries = match value {
            Value::Map(entries) => entries,
            Value::Array(items) => match items.as_slice() {
                [] => return Ok(None),
                [Value::Map(entries)] => entries,
                [Value::Nil] => return Ok(None),
                [other] => return Err(wrong_type(&path, "a block", other)),
                _ => {
                    return Err(ConfigError::invalid(
                        path,
                        format!("only one block is allowed, got {}", items.len()),
                    ))
                }
            },
            other => return Err(wrong_type(&path, "a block", other)),
        };
        Ok(Some(CtyObject { path, entries }))
    }
}

fn as_string(value: &Value, field: &str) -> Result<String, ConfigError> {
    match value {
        Value::String(s) => s
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ConfigError::invalid(field, "string is not valid UTF-8")),
        other => Err(wrong_type(field, "a string", other)),
    }
}

/// Reads a cty number that must be whole. Accepts integers, float64 with no
/// fractional part, and decimal strings (cty encodes numbers that are not
/// exact in binary, or beyond int64, as text).
fn as_integer(value: &Value, field: &str) -> Result<i64, ConfigError> {
    let not_whole =
        |shown: &str| ConfigError::invalid(field, format!("must be a whole number, got {shown}"));
    let out_of_range =
        |shown: &str| ConfigError::invalid(field, format!("{shown} is out of range"));
    match value {
        Value::Integer(i) => i.as_i64().ok_or_else(|| out_of_range(&i.to_string())),
        Value::F64(f) => float_to_integer(*f).ok_or_else(|| not_whole(&f.to_string())),
        Value::F32(f) => float_to_integer(f64::from(*f)).ok_or_else(|| not_whole(&f.to_string())),
        Value::String(s) => {
            let text = s
                .as_str()
                .ok_or_else(|| ConfigError::invalid(field, "number is not valid UTF-8"))?;
            if let Ok(i) = text.parse::<i64>() {
                return Ok(i);
            }
            let f: f64 = text
                .parse()
                .map_err(|_| wrong_type(field, "a number", value))?;
            if f.fract() != 0.0 {
                Err(not_whole(text))
            } else {
                float_to_integer(f).ok_or_else(|| out_of_range(text))
            }
        }
        other => Err(wrong_type(field, "a number", other)),
    }
}

fn float_to_integer(f: f64) -> Option<i64> {
    // 2^63 is exactly representable; anything at or above it does not fit.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    (f.is_finite() && f.fract() == 0.0 && (-LIMIT..LIMIT).contains(&f)).then_some(f as i64)
}

fn wrong_type(field: &str, expected: &str, got: &Value) -> ConfigError {
    ConfigError::invalid(field, format!("expected {expected}, got {}", kind(got)))
}

/// A short human name for the msgpack type of `value`.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Nil => "null",
        Value::Boolean(_) => "a bool",
        Value::Integer(_) | Value::F32(_) | Value::F64(_) => "a number",
        Value::String(_) => "a string",
        Value::Binary(_) => "binary data",
        Value::Array(_) => "a list",
        Value::Map(_) => "a map",
        Value::Ext(..) => "an unknown value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::*;

    #[test]
    fn nil_and_absent_keys_read_as_none() {
        let value = object(&[("a", Value::Nil)]);
        let root = CtyObject::root(&value).unwrap();
        assert_eq!(root.string("a"), Ok(None));
        assert_eq!(root.string("missing"), Ok(None));
        assert_eq!(root.integer("a"), Ok(None));
        assert!(root.block("a").unwrap().is_none());
    }

    #[test]
    fn integers_arrive_in_every_cty_shape() {
        let value = object(&[
            ("fixint", Value::from(7)),
            ("uint16", Value::from(8080u16)),
            ("negative", Value::from(-3)),
            ("float", Value::F64(256.0)),
            ("text", Value::from("512")),
            ("big_text", Value::from("1e3")),
        ]);
        let root = CtyObject::root(&value).unwrap();
        assert_eq!(root.integer("fixint"), Ok(Some(7)));
        assert_eq!(root.integer("uint16"), Ok(Some(8080)));
        assert_eq!(root.integer("negative"), Ok(Some(-3)));
        assert_eq!(root.integer("float"), Ok(Some(256)));
        assert_eq!(root.integer("text"), Ok(Some(512)));
        assert_eq!(root.integer("big_text"), Ok(Some(1000)));
    }

    #[test]
    fn fractional_and_oversized_numbers_are_rejected_by_name() {
        let value = object(&[
            ("half", Value::F64(0.5)),
            ("tenth", Value::from("0.1")),
            ("huge", Value::from("123456789012345678901234567890")),
            ("u64", Value::from(u64::MAX)),
            ("word", Value::from("lots")),
        ]);
        let root = CtyObject::root(&value).unwrap();
        for key in ["half", "tenth", "huge", "u64", "word"] {
            let err = root.integer(key).unwrap_err();
            assert_eq!(err.field(), Some(key), "{err}");
        }
    }

    #[test]
    fn blocks_may_be_maps_or_lists_of_at_most_one_map() {
        let inner = object(&[("x", Value::from(1))]);
        let value = object(&[
            ("as_map", inner.clone()),
            ("as_list", Value::Array(vec![inner.clone()])),
            ("empty_list", Value::Array(vec![])),
            ("two", Value::Array(vec![inner.clone(), inner])),
        ]);
        let root = CtyObject::root(&value).unwrap();
        let block = root.block("as_map").unwrap().unwrap();
        assert_eq!(block.integer("x"), Ok(Some(1)));
        assert_eq!(block.field_path("x"), "as_map.x");
        let block = root.block("as_list").unwrap().unwrap();
        assert_eq!(block.integer("x"), Ok(Some(1)));
        assert!(root.block("empty_list").unwrap().is_none());
        assert_eq!(root.block("two").unwrap_err().field(), Some("two"));
    }

    #[test]
    fn list_of_maps_is_merged_in_order() {
        let value = object(&[(
            "env",
            Value::Array(vec![
                object(&[("A", Value::from("1")), ("B", Value::from("2"))]),
                object(&[("B", Value::from("3"))]),
            ]),
        )]);
        let root = CtyObject::root(&value).unwrap();
        let env = root.string_map("env").unwrap().unwrap();
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "3");
    }

    #[test]
    fn malformed_bytes_and_non_objects_are_reported() {
        assert!(matches!(
            decode(&[0x81, 0xa1]),
            Err(ConfigError::Malformed { .. })
        ));
        assert!(matches!(
            decode(&[0x80, 0x80]),
            Err(ConfigError::Malformed { .. })
        ));
        assert_eq!(decode(&[]), Ok(Value::Nil));
        let list = Value::Array(vec![]);
        assert!(matches!(
            CtyObject::root(&list),
            Err(ConfigError::Malformed { .. })
        ));
        // An unknown cty value (ext d4 00 00) is a type error naming the field.
        let value = decode(&[0x81, 0xa1, b'a', 0xd4, 0x00, 0x00]).unwrap();
        let root = CtyObject::root(&value).unwrap();
        assert_eq!(root.string("a").unwrap_err().field(), Some("a"));
    }
}
