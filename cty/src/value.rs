//! Builders for msgpack values shaped like Nomad's cty encoding, for tests
//! that hand the plugin a value written as Nomad would write it.

use rmpv::Value;

/// A cty object: keys sorted lexicographically, as go-cty writes them.
pub fn object(entries: &[(&str, Value)]) -> Value {
    let mut entries: Vec<(Value, Value)> = entries
        .iter()
        .map(|(k, v)| (Value::from(*k), v.clone()))
        .collect();
    entries.sort_by(|a, b| a.0.as_str().cmp(&b.0.as_str()));
    Value::Map(entries)
}

/// A list of strings.
pub fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::from(*s)).collect())
}

/// Encodes a value to bytes.
pub fn bytes(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, value).expect("writing to a Vec cannot fail");
    out
}
