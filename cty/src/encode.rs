//! Configuration bodies encoded as Nomad encodes them for a plugin: the HCL
//! body is rewritten the way the jobspec parser does (nested blocks and
//! object literals become lists of objects), evaluated with the task's
//! variables, decoded against the plugin's own `hclspec` (as returned by
//! `ConfigSchema`/`TaskConfigSchema`), and written as go-cty msgpack
//! (objects with every attribute, absent ones nil, keys sorted).
//!
//! Supported spec kinds: `Object`, `Attr`, `Block`, `BlockList`,
//! `BlockSet`, `BlockAttrs`, `Default`, `Literal`, `Array`. `BlockMap` is
//! rejected with a clear error. Attribute types: `string`, `number`,
//! `bool`, `any`, `list(T)`, `set(T)`, `map(T)`.

use std::collections::BTreeMap;

use elide_proto::hashicorp::nomad::plugins::shared::hclspec::{spec::Block as SpecKind, Spec};
use hcl::eval::Context;
use hcl::{Body, Value};
use rmpv::Value as Mp;

/// Evaluates an expression; the error text names what failed (for
/// example an unknown variable).
fn eval(expr: &hcl::Expression, ctx: &Context<'_>) -> Result<Value, String> {
    use hcl::eval::Evaluate;
    expr.evaluate(ctx).map_err(|e| e.to_string())
}

/// A config value that does not fit the plugin's schema.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {problem}")]
pub struct CtyError {
    /// Dotted path of the offending attribute or block (`config.elide_opts.timeout`).
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

fn err(field: &str, problem: impl Into<String>) -> CtyError {
    CtyError {
        field: field.to_owned(),
        problem: problem.into(),
    }
}

/// Turns a body into a value as Nomad's jobspec parser stores it: each
/// attribute evaluated in `ctx` (object literals wrapped in a one-element
/// list), each nested block `b { … }` appended to a list under `b`
/// (labelled blocks nested in maps keyed by their labels).
pub fn body_to_value(body: &Body, ctx: &Context<'_>, path: &str) -> Result<Value, CtyError> {
    let mut out: hcl::Map<String, Value> = hcl::Map::new();
    for attr in body.attributes() {
        let field = format!("{path}.{}", attr.key());
        let value = eval(attr.expr(), ctx).map_err(|e| err(&field, e))?;
        let value = match value {
            Value::Object(_) => Value::Array(vec![value]),
            other => other,
        };
        if out.insert(attr.key().to_owned(), value).is_some() {
            return Err(err(&field, "is set more than once"));
        }
    }
    for block in body.blocks() {
        let field = format!("{path}.{}", block.identifier());
        let mut value = body_to_value(block.body(), ctx, &field)?;
        for label in block.labels().iter().rev() {
            let mut map = hcl::Map::new();
            map.insert(label.as_str().to_owned(), Value::Array(vec![value]));
            value = Value::Object(map);
        }
        match out
            .entry(block.identifier().to_owned())
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            Value::Array(items) => items.push(value),
            _ => return Err(err(&field, "is both an attribute and a block")),
        }
    }
    Ok(Value::Object(out))
}

/// Decodes `value` (a rewritten body, see [`body_to_value`]) with `spec`
/// and returns the cty msgpack bytes. `path` prefixes field names in errors.
pub fn encode(spec: &Spec, value: &Value, path: &str) -> Result<Vec<u8>, CtyError> {
    let decoded = decode_root(spec, value, path)?;
    let mut bytes = Vec::new();
    rmpv::encode::write_value(&mut bytes, &decoded).expect("writing msgpack to memory");
    Ok(bytes)
}

fn decode_root(spec: &Spec, value: &Value, path: &str) -> Result<Mp, CtyError> {
    match &spec.block {
        Some(SpecKind::Object(_)) => decode_body(spec, value.as_object(), path),
        None => Ok(Mp::Map(Vec::new())),
        Some(_) => Err(err(path, "the plugin's schema root is not an Object")),
    }
}

/// Decodes one spec node against a body (`None`: the body is absent).
fn decode_body(
    spec: &Spec,
    body: Option<&hcl::Map<String, Value>>,
    path: &str,
) -> Result<Mp, CtyError> {
    let Some(SpecKind::Object(object)) = &spec.block else {
        return Err(err(path, "expected an Object spec for a block body"));
    };
    let empty = hcl::Map::new();
    let body = body.unwrap_or(&empty);
    for key in body.keys() {
        let known = object
            .attributes
            .iter()
            .any(|(name, member)| hcl_name(name, member) == key);
        if !known {
            let mut names: Vec<&str> = object
                .attributes
                .iter()
                .map(|(n, m)| hcl_name(n, m))
                .collect();
            names.sort();
            return Err(err(
                &format!("{path}.{key}"),
                format!(
                    "unsupported argument or block (known: {})",
                    names.join(", ")
                ),
            ));
        }
    }
    let mut entries: BTreeMap<String, Mp> = BTreeMap::new();
    for (key, member) in &object.attributes {
        let name = hcl_name(key, member);
        let field = format!("{path}.{name}");
        entries.insert(key.clone(), decode_member(member, body.get(name), &field)?);
    }
    Ok(Mp::Map(
        entries.into_iter().map(|(k, v)| (Mp::from(k), v)).collect(),
    ))
}

/// The HCL name of an object member: its own `name`, else the map key.
fn hcl_name<'a>(key: &'a str, member: &'a Spec) -> &'a str {
    let name = match &member.block {
        Some(SpecKind::Attr(a)) => a.name.as_str(),
        Some(SpecKind::BlockValue(b)) => b.name.as_str(),
        Some(SpecKind::BlockAttrs(b)) => b.name.as_str(),
        Some(SpecKind::BlockList(b)) => b.name.as_str(),
        Some(SpecKind::BlockSet(b)) => b.name.as_str(),
        Some(SpecKind::BlockMap(b)) => b.name.as_str(),
        Some(SpecKind::Default(d)) => {
            return d.primary.as_deref().map_or(key, |p| hcl_name(key, p));
        }
        _ => "",
    };
    if name.is_empty() {
        key
    } else {
        name
    }
}

fn decode_member(spec: &Spec, value: Option<&Value>, path: &str) -> Result<Mp, CtyError> {
    let value = value.filter(|v| !v.is_null());
    match &spec.block {
        Some(SpecKind::Attr(attr)) => match value {
            None if attr.required => Err(err(path, "is required")),
            None => Ok(Mp::Nil),
            Some(v) => convert(&parse_type(&attr.r#type, path)?, v, path),
        },
        Some(SpecKind::BlockValue(block)) => {
            let nested = block.nested.as_deref().cloned().unwrap_or_default();
            let items = blocks(value, path)?;
            match items.as_slice() {
                [] if block.required => Err(err(path, "block is required")),
                [] => Ok(Mp::Nil),
                [one] => decode_body(&nested, Some(one), path),
                _ => Err(err(path, "only one block is allowed")),
            }
        }
        Some(SpecKind::BlockList(list)) => {
            let nested = list.nested.as_deref().cloned().unwrap_or_default();
            let items = blocks(value, path)?;
            let n = items.len() as u64;
            if n < list.min_items || (list.max_items > 0 && n > list.max_items) {
                return Err(err(
                    path,
                    format!(
                        "needs between {} and {} blocks, got {n}",
                        list.min_items, list.max_items
                    ),
                ));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, item)| decode_body(&nested, Some(item), &format!("{path}[{i}]")))
                .collect::<Result<Vec<_>, _>>()
                .map(Mp::Array)
        }
        Some(SpecKind::BlockSet(set)) => {
            let nested = set.nested.as_deref().cloned().unwrap_or_default();
            blocks(value, path)?
                .iter()
                .enumerate()
                .map(|(i, item)| decode_body(&nested, Some(item), &format!("{path}[{i}]")))
                .collect::<Result<Vec<_>, _>>()
                .map(Mp::Array)
        }
        Some(SpecKind::BlockAttrs(attrs)) => {
            let items = blocks(value, path)?;
            match items.as_slice() {
                [] if attrs.required => Err(err(path, "block is required")),
                [] => Ok(Mp::Nil),
                [one] => convert(
                    &CtyType::Map(Box::new(parse_type(&attrs.r#type, path)?)),
                    &Value::Object((*one).clone()),
                    path,
                ),
                _ => Err(err(path, "only one block is allowed")),
            }
        }
        Some(SpecKind::Default(default)) => {
            let primary = default.primary.as_deref().cloned().unwrap_or_default();
            let chosen = decode_member(&primary, value, path)?;
            if !chosen.is_nil() {
                return Ok(chosen);
            }
            match default.default.as_deref() {
                Some(fallback) => decode_member(fallback, None, path),
                None => Ok(Mp::Nil),
            }
        }
        Some(SpecKind::Literal(literal)) => {
            let body = hcl::parse(&format!("v = {}", literal.value)).map_err(|e| {
                err(
                    path,
                    format!("the plugin's default literal does not parse: {e}"),
                )
            })?;
            let expr = body
                .attributes()
                .next()
                .map(|a| a.expr().clone())
                .ok_or_else(|| err(path, "empty default literal"))?;
            let v = eval(&expr, &Context::new()).map_err(|e| err(path, e))?;
            convert(&CtyType::Any, &v, path)
        }
        Some(SpecKind::Array(array)) => array
            .values
            .iter()
            .map(|member| decode_member(member, value, path))
            .collect::<Result<Vec<_>, _>>()
            .map(Mp::Array),
        Some(SpecKind::Object(_)) => decode_body(spec, value.and_then(Value::as_object), path),
        Some(SpecKind::BlockMap(_)) => Err(err(
            path,
            "the plugin uses a labelled-block map (BlockMap), which elide-run does not encode",
        )),
        None => Err(err(path, "the plugin's schema has an empty spec here")),
    }
}

/// The block instances of a rewritten body entry: a list of objects (or a
/// single object).
fn blocks<'a>(
    value: Option<&'a Value>,
    path: &str,
) -> Result<Vec<&'a hcl::Map<String, Value>>, CtyError> {
    match value {
        None => Ok(Vec::new()),
        Some(Value::Object(map)) => Ok(vec![map]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_object().ok_or_else(|| err(path, "expected a block")))
            .collect(),
        Some(_) => Err(err(path, "expected a block, found an attribute value")),
    }
}

/// An HCL type expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtyType {
    /// `string`.
    String,
    /// `number`.
    Number,
    /// `bool`.
    Bool,
    /// `any`.
    Any,
    /// `list(T)` or `set(T)`.
    List(Box<CtyType>),
    /// `map(T)`.
    Map(Box<CtyType>),
}

/// Parses the type expressions plugins use in `Attr.type`.
pub fn parse_type(text: &str, path: &str) -> Result<CtyType, CtyError> {
    let text = text.trim();
    let inner = |prefix: &str| {
        text.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(')'))
            .map(|r| parse_type(r, path))
    };
    match text {
        "string" => Ok(CtyType::String),
        "number" => Ok(CtyType::Number),
        "bool" => Ok(CtyType::Bool),
        "any" => Ok(CtyType::Any),
        _ => {
            if let Some(t) = inner("list(").or_else(|| inner("set(")) {
                return Ok(CtyType::List(Box::new(t?)));
            }
            if let Some(t) = inner("map(") {
                return Ok(CtyType::Map(Box::new(t?)));
            }
            Err(err(
                path,
                format!("the plugin's schema uses type {text:?}, which elide-run does not encode"),
            ))
        }
    }
}

fn convert(ty: &CtyType, value: &Value, path: &str) -> Result<Mp, CtyError> {
    let mismatch = |want: &str| err(path, format!("must be {want}, got {}", describe(value)));
    match (ty, value) {
        (_, Value::Null) => Ok(Mp::Nil),
        (CtyType::String, Value::String(s)) => Ok(Mp::from(s.as_str())),
        (CtyType::String, Value::Number(n)) => Ok(Mp::from(n.to_string())),
        (CtyType::String, Value::Bool(b)) => Ok(Mp::from(b.to_string())),
        (CtyType::String, _) => Err(mismatch("a string")),
        (CtyType::Number, Value::Number(n)) => Ok(number(n)),
        (CtyType::Number, Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(hcl::Number::from_f64)
            .map(|n| number(&n))
            .ok_or_else(|| mismatch("a number")),
        (CtyType::Number, _) => Err(mismatch("a number")),
        (CtyType::Bool, Value::Bool(b)) => Ok(Mp::Boolean(*b)),
        (CtyType::Bool, Value::String(s)) if s == "true" || s == "false" => {
            Ok(Mp::Boolean(s == "true"))
        }
        (CtyType::Bool, _) => Err(mismatch("a bool")),
        (CtyType::List(item), Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| convert(item, v, &format!("{path}[{i}]")))
            .collect::<Result<Vec<_>, _>>()
            .map(Mp::Array),
        (CtyType::List(_), _) => Err(mismatch("a list")),
        (CtyType::Map(item), Value::Object(map)) => {
            let sorted: BTreeMap<&String, &Value> = map.iter().collect();
            sorted
                .into_iter()
                .map(|(k, v)| {
                    Ok((
                        Mp::from(k.as_str()),
                        convert(item, v, &format!("{path}.{k}"))?,
                    ))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Mp::Map)
        }
        (CtyType::Map(_), _) => Err(mismatch("a map")),
        (CtyType::Any, Value::String(s)) => Ok(Mp::from(s.as_str())),
        (CtyType::Any, Value::Number(n)) => Ok(number(n)),
        (CtyType::Any, Value::Bool(b)) => Ok(Mp::Boolean(*b)),
        (CtyType::Any, Value::Array(_)) => {
            convert(&CtyType::List(Box::new(CtyType::Any)), value, path)
        }
        (CtyType::Any, Value::Object(_)) => {
            convert(&CtyType::Map(Box::new(CtyType::Any)), value, path)
        }
    }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object or block",
    }
}

/// A cty number: an integer fitting in 64 bits as the smallest integer
/// encoding, a fraction exactly representable in binary as float64, any
/// other fraction (`0.1`) as its decimal text, as go-cty does.
pub fn number(n: &hcl::Number) -> Mp {
    if let Some(i) = n.as_i64() {
        return Mp::from(i);
    }
    if let Some(u) = n.as_u64() {
        return Mp::from(u);
    }
    let f = n.as_f64().unwrap_or(f64::NAN);
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.2e18 {
        return Mp::from(f as i64);
    }
    let text = format!("{f}");
    let decimal_digits = text.split_once('.').map_or(0, |(_, frac)| frac.len());
    if decimal_digits == binary_fraction_bits(f) {
        Mp::F64(f)
    } else {
        Mp::from(text)
    }
}

/// How many binary digits `f` has after the point; a decimal literal is
/// exactly `f` only if its shortest text has as many decimal digits.
fn binary_fraction_bits(f: f64) -> usize {
    let mut bits = 0;
    let mut x = f.abs();
    while x.fract() != 0.0 && bits < 1100 {
        x *= 2.0;
        bits += 1;
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;
    use elide_proto::hashicorp::nomad::plugins::shared::hclspec::{
        Attr, Block, Default, Literal, Object,
    };

    fn attr(ty: &str) -> Spec {
        Spec {
            block: Some(SpecKind::Attr(Attr {
                name: String::new(),
                r#type: ty.into(),
                required: false,
            })),
        }
    }
    fn object(members: &[(&str, Spec)]) -> Spec {
        Spec {
            block: Some(SpecKind::Object(Object {
                attributes: members
                    .iter()
                    .map(|(k, s)| (k.to_string(), s.clone()))
                    .collect(),
            })),
        }
    }
    fn block(nested: Spec) -> Spec {
        Spec {
            block: Some(SpecKind::BlockValue(Box::new(Block {
                name: String::new(),
                required: false,
                nested: Some(Box::new(nested)),
            }))),
        }
    }

    /// The shape of nomad-driver-elide's task schema.
    fn task_schema() -> Spec {
        object(&[
            ("script", attr("string")),
            ("code", attr("string")),
            ("language", attr("string")),
            ("args", attr("list(string)")),
            ("env", attr("list(map(string))")),
            (
                "elide_opts",
                block(object(&[
                    ("memory_limit", attr("number")),
                    ("enable_ai", attr("bool")),
                    ("timeout", attr("string")),
                    ("intrinsics", attr("list(string)")),
                ])),
            ),
        ])
    }

    fn encode_text(spec: &Spec, hcl_text: &str, ctx: &Context<'_>) -> Result<Mp, CtyError> {
        let body = hcl::parse(hcl_text).unwrap();
        let value = body_to_value(&body, ctx, "config")?;
        let bytes = encode(spec, &value, "config")?;
        Ok(rmpv::decode::read_value(&mut bytes.as_slice()).unwrap())
    }

    fn keys(map: &Mp) -> Vec<&str> {
        map.as_map()
            .unwrap()
            .iter()
            .map(|(k, _)| k.as_str().unwrap())
            .collect()
    }

    fn get<'a>(map: &'a Mp, key: &str) -> &'a Mp {
        &map.as_map()
            .unwrap()
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .unwrap()
            .1
    }

    #[test]
    fn task_config_is_encoded_like_nomad_with_every_key_sorted() {
        let mut ctx = Context::new();
        ctx.declare_var("NOMAD_TASK_DIR", "/alloc/t/local");
        let v = encode_text(
            &task_schema(),
            r#"
            script = "${NOMAD_TASK_DIR}/a.py"
            args = ["x", 2]
            env = { GREETING = "hi" }
            elide_opts {
              memory_limit = 64
              timeout = "3s"
            }"#,
            &ctx,
        )
        .unwrap();
        assert_eq!(
            keys(&v),
            ["args", "code", "elide_opts", "env", "language", "script"]
        );
        assert_eq!(get(&v, "script").as_str(), Some("/alloc/t/local/a.py"));
        assert_eq!(get(&v, "code"), &Mp::Nil);
        assert_eq!(
            get(&v, "args"),
            &Mp::Array(vec![Mp::from("x"), Mp::from("2")])
        );
        // `env = { … }` becomes a one-element list of maps.
        assert_eq!(
            get(&v, "env"),
            &Mp::Array(vec![Mp::Map(vec![(Mp::from("GREETING"), Mp::from("hi"))])])
        );
        let opts = get(&v, "elide_opts");
        assert_eq!(
            keys(opts),
            ["enable_ai", "intrinsics", "memory_limit", "timeout"]
        );
        assert_eq!(get(opts, "memory_limit"), &Mp::from(64));
        assert_eq!(get(opts, "enable_ai"), &Mp::Nil);
    }

    #[test]
    fn an_absent_block_is_nil_and_an_empty_body_still_lists_every_key() {
        let v = encode_text(&task_schema(), "", &Context::new()).unwrap();
        assert_eq!(keys(&v).len(), 6);
        assert!(v.as_map().unwrap().iter().all(|(_, v)| v.is_nil()));
    }

    #[test]
    fn numbers_follow_go_cty() {
        let n = |text: &str| {
            let body = hcl::parse(&format!("v = {text}")).unwrap();
            let value = eval(body.attributes().next().unwrap().expr(), &Context::new()).unwrap();
            number(value.as_number().unwrap())
        };
        assert_eq!(n("8080"), Mp::from(8080));
        assert_eq!(n("-3"), Mp::from(-3));
        assert_eq!(n("0.5"), Mp::F64(0.5));
        assert_eq!(n("1.25"), Mp::F64(1.25));
        assert_eq!(n("0.1"), Mp::from("0.1"));
        assert_eq!(n("1.3"), Mp::from("1.3"));
    }

    #[test]
    fn defaults_and_literals_apply_when_absent() {
        let spec = object(&[(
            "mode",
            Spec {
                block: Some(SpecKind::Default(Box::new(Default {
                    primary: Some(Box::new(attr("string"))),
                    default: Some(Box::new(Spec {
                        block: Some(SpecKind::Literal(Literal {
                            value: "\"auto\"".into(),
                        })),
                    })),
                }))),
            },
        )]);
        let v = encode_text(&spec, "", &Context::new()).unwrap();
        assert_eq!(get(&v, "mode").as_str(), Some("auto"));
        let v = encode_text(&spec, "mode = \"poll\"", &Context::new()).unwrap();
        assert_eq!(get(&v, "mode").as_str(), Some("poll"));
    }

    #[test]
    fn mistakes_name_the_field() {
        let e = encode_text(&task_schema(), "scrpt = \"a.py\"", &Context::new()).unwrap_err();
        assert_eq!(e.field, "config.scrpt");
        assert!(e.problem.contains("known: args, code"), "{e}");
        let e = encode_text(
            &task_schema(),
            "elide_opts { memory_limit = \"lots\" }",
            &Context::new(),
        )
        .unwrap_err();
        assert_eq!(e.field, "config.elide_opts.memory_limit");
        let e = encode_text(
            &task_schema(),
            "elide_opts {}\nelide_opts {}",
            &Context::new(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "config.elide_opts: only one block is allowed"
        );
        let e = encode_text(&task_schema(), "script = \"${nope}\"", &Context::new()).unwrap_err();
        assert_eq!(e.field, "config.script");
        assert!(e.problem.contains("nope"), "{e}");
        let e = encode_text(&task_schema(), "args = \"x\"", &Context::new()).unwrap_err();
        assert_eq!(e.to_string(), "config.args: must be a list, got a string");
    }
}
