//! `template` blocks rendered into the task directory before the task
//! starts.
//!
//! Supported: literal `data`, `destination` (relative to the task
//! directory, may point into `../alloc/`), `perms`, custom delimiters, and
//! the consul-template action `{{ env "NAME" }}` (read from the task
//! environment). Not supported (an error naming the template): `source`
//! files, `env = true` templates, and every other consul-template action
//! (`key`, `service`, `secret`, `nomadVar`, pipelines, …), which need
//! Consul, Vault or Nomad servers. Templates are rendered once: there is
//! no re-rendering or `change_mode`.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use crate::jobspec::TemplateSpec;

/// A template cannot be rendered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("template -> {destination}: {problem}")]
pub struct TemplateError {
    /// `destination` of the template.
    pub destination: String,
    /// What is wrong or unsupported.
    pub problem: String,
}

/// Renders a template's text: literal data with `{{ env "NAME" }}` substituted.
pub fn render(t: &TemplateSpec, env: &BTreeMap<String, String>) -> Result<String, TemplateError> {
    let fail = |problem: String| TemplateError {
        destination: t.destination.clone(),
        problem,
    };
    if t.source.is_some() {
        return Err(fail(
            "`source` is not supported by elide-run (only literal `data`); inline the file with data = <<EOF … EOF".into(),
        ));
    }
    if t.env {
        return Err(fail(
            "`env = true` templates are not supported by elide-run; use the task's env block"
                .into(),
        ));
    }
    let data = t
        .data
        .as_deref()
        .ok_or_else(|| fail("needs `data` (the only template input elide-run supports)".into()))?;
    let (left, right) = (t.left_delimiter.as_str(), t.right_delimiter.as_str());
    let mut out = String::with_capacity(data.len());
    let mut rest = data;
    while let Some(start) = rest.find(left) {
        out.push_str(&rest[..start]);
        let after = &rest[start + left.len()..];
        let end = after
            .find(right)
            .ok_or_else(|| fail(format!("unterminated {left} … {right} action")))?;
        let action = after[..end]
            .trim()
            .trim_start_matches('-')
            .trim_end_matches('-')
            .trim();
        out.push_str(&action_value(action, env).map_err(fail)?);
        rest = &after[end + right.len()..];
    }
    out.push_str(rest);
    Ok(out)
}

fn action_value(action: &str, env: &BTreeMap<String, String>) -> Result<String, String> {
    let words: Vec<&str> = action.split_whitespace().collect();
    if let ["env", name] = words.as_slice() {
        if let Some(name) = name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
            return Ok(env.get(name).cloned().unwrap_or_default());
        }
    }
    let function = words.first().copied().unwrap_or("");
    Err(format!(
        "consul-template action {{{{ {action} }}}} is not supported: elide-run renders literal data and {{{{ env \"NAME\" }}}} only; {} need Consul, Vault or Nomad servers",
        if function.is_empty() { "other actions".to_owned() } else { format!("`{function}` and other functions") }
    ))
}

/// Where a template's file goes: `destination` under the task directory,
/// which must stay inside the allocation directory.
pub fn destination(
    t: &TemplateSpec,
    task_dir: &Path,
    alloc_dir: &Path,
) -> Result<PathBuf, TemplateError> {
    let fail = |problem: &str| TemplateError {
        destination: t.destination.clone(),
        problem: problem.to_owned(),
    };
    let relative = Path::new(&t.destination);
    if relative.is_absolute() {
        return Err(fail("must be relative to the task directory"));
    }
    let mut path = task_dir.to_path_buf();
    for component in relative.components() {
        match component {
            Component::Normal(part) => path.push(part),
            Component::ParentDir => {
                path.pop();
            }
            Component::CurDir => {}
            _ => return Err(fail("is not a plain relative path")),
        }
    }
    if !path.starts_with(alloc_dir) || path == alloc_dir {
        return Err(fail("points outside the allocation directory"));
    }
    Ok(path)
}

/// Renders `t` and writes it (with `perms`) under `task_dir`.
pub fn write(
    t: &TemplateSpec,
    env: &BTreeMap<String, String>,
    task_dir: &Path,
    alloc_dir: &Path,
) -> Result<PathBuf, TemplateError> {
    use std::os::unix::fs::PermissionsExt;
    let text = render(t, env)?;
    let path = destination(t, task_dir, alloc_dir)?;
    let io = |e: std::io::Error| TemplateError {
        destination: t.destination.clone(),
        problem: format!("cannot write {}: {e}", path.display()),
    };
    let mode =
        u32::from_str_radix(t.perms.trim_start_matches("0o"), 8).map_err(|_| TemplateError {
            destination: t.destination.clone(),
            problem: format!("perms {:?} is not an octal mode like \"644\"", t.perms),
        })?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(&path, text).map_err(io)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777)).map_err(io)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(data: &str) -> TemplateSpec {
        TemplateSpec {
            data: Some(data.into()),
            source: None,
            destination: "local/out.txt".into(),
            perms: "640".into(),
            env: false,
            left_delimiter: "{{".into(),
            right_delimiter: "}}".into(),
        }
    }

    #[test]
    fn literal_data_and_env_actions_render() {
        let env = BTreeMap::from([("NAME".to_owned(), "nomad".to_owned())]);
        assert_eq!(
            render(&spec("plain\ntext\n"), &env).unwrap(),
            "plain\ntext\n"
        );
        assert_eq!(
            render(&spec("hi {{ env \"NAME\" }}!"), &env).unwrap(),
            "hi nomad!"
        );
        assert_eq!(render(&spec("[{{env \"MISSING\"}}]"), &env).unwrap(), "[]");
        let mut custom = spec("<< env \"NAME\" >> {{ untouched }}");
        custom.left_delimiter = "<<".into();
        custom.right_delimiter = ">>".into();
        assert_eq!(render(&custom, &env).unwrap(), "nomad {{ untouched }}");
    }

    #[test]
    fn unsupported_features_are_named() {
        let env = BTreeMap::new();
        let e = render(&spec("{{ key \"app/config\" }}"), &env).unwrap_err();
        assert!(
            e.problem.contains("`key`") && e.problem.contains("Consul"),
            "{e}"
        );
        let e = render(&spec("{{ with secret \"kv/x\" }}{{ end }}"), &env).unwrap_err();
        assert!(e.problem.contains("`with`"), "{e}");
        let mut s = spec("");
        s.source = Some("/etc/x.tpl".into());
        assert!(render(&s, &env)
            .unwrap_err()
            .problem
            .contains("`source` is not supported"));
        let mut s = spec("A=1");
        s.env = true;
        assert!(render(&s, &env).unwrap_err().problem.contains("env = true"));
        assert!(render(&spec("{{ env \"X\""), &env)
            .unwrap_err()
            .problem
            .contains("unterminated"));
    }

    #[test]
    fn writes_with_perms_and_stays_inside_the_alloc() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let alloc = root.path().join("a");
        let task = alloc.join("t");
        let path = write(&spec("x"), &BTreeMap::new(), &task, &alloc).unwrap();
        assert_eq!(path, task.join("local/out.txt"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "x");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let mut shared = spec("y");
        shared.destination = "../alloc/data/y".into();
        assert_eq!(
            destination(&shared, &task, &alloc).unwrap(),
            alloc.join("alloc/data/y")
        );
        shared.destination = "../../etc/passwd".into();
        assert!(destination(&shared, &task, &alloc).is_err());
        shared.destination = "/etc/passwd".into();
        assert!(destination(&shared, &task, &alloc).is_err());
    }
}
