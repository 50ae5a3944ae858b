//! Small builders for Nomad's HCL specification messages, so the schemas in
//! [`crate::plugin_config`] and [`crate::task_config`] read like the HCL
//! they describe.

use elide_proto::hashicorp::nomad::plugins::shared::hclspec::{
    spec::Block as SpecKind, Attr, Block, Object, Spec,
};

/// An attribute of HCL type expression `hcl_type` (`"string"`,
/// `"list(string)"`). Its HCL name is the key it is placed under in an
/// [`object`].
pub fn attr(hcl_type: &str) -> Spec {
    Spec {
        block: Some(SpecKind::Attr(Attr {
            name: String::new(),
            r#type: hcl_type.to_owned(),
            required: false,
        })),
    }
}

/// A single nested block (at most one; `nil` when absent) whose body is
/// `nested`. Its HCL name is the key it is placed under in an [`object`].
pub fn block(nested: Spec) -> Spec {
    Spec {
        block: Some(SpecKind::BlockValue(Box::new(Block {
            name: String::new(),
            required: false,
            nested: Some(Box::new(nested)),
        }))),
    }
}

/// An object from `(key, spec)` pairs; each key is the HCL name of its member.
pub fn object<'a>(members: impl IntoIterator<Item = (&'a str, Spec)>) -> Spec {
    Spec {
        block: Some(SpecKind::Object(Object {
            attributes: members
                .into_iter()
                .map(|(name, spec)| (name.to_owned(), spec))
                .collect(),
        })),
    }
}
