//! A group's `network { port "<label>" { … } }` block, and the host ports
//! `elide-run` assigns for it as a Nomad client does for a task in the
//! host's network (the elide driver has no network isolation):
//!
//! * a port with `static = N` gets N;
//! * any other port gets a free dynamic port from Nomad's default range
//!   (20000–32000), checked by binding it;
//! * the task sees `NOMAD_PORT_<label>` (the `to` value when `to` is set,
//!   as Nomad does, else the host port), `NOMAD_HOST_PORT_<label>`,
//!   `NOMAD_ALLOC_PORT_<label>`, `NOMAD_IP_<label>`, `NOMAD_HOST_IP_<label>`,
//!   `NOMAD_ADDR_<label>` and `NOMAD_HOST_ADDR_<label>`.
//!
//! The address is 127.0.0.1: elide-run runs everything on this machine.

use std::net::{Ipv4Addr, TcpListener};

use hcl::eval::Context;
use hcl::{Body, Value};

/// Nomad's default `min_dynamic_port`.
pub const MIN_DYNAMIC_PORT: u16 = 20000;
/// Nomad's default `max_dynamic_port`.
pub const MAX_DYNAMIC_PORT: u16 = 32000;
/// Random ports tried before giving up on finding a free one.
const DYNAMIC_PORT_ATTEMPTS: usize = 200;
/// The address ports are announced on.
pub const HOST_IP: &str = "127.0.0.1";

/// One `port "<label>" {}` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// The label (`http`).
    pub label: String,
    /// `static`: a fixed host port.
    pub static_port: Option<u16>,
    /// `to`: the port the task is told to use (`NOMAD_PORT_<label>`).
    pub to: Option<u16>,
}

/// A port with its host port chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignedPort {
    /// The label.
    pub label: String,
    /// The host port (static or dynamic).
    pub host_port: u16,
    /// `to`, if set.
    pub to: Option<u16>,
}

/// A problem in a `network` block: the dotted field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkError {
    /// Dotted path of the offending attribute or block.
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

/// Reads a group's `network` block at `path`: its ports, and warnings
/// for what is accepted but not emulated (`mode`, `dns`, `hostname`, …).
pub fn parse(body: &Body, path: &str) -> Result<(Vec<PortSpec>, Vec<String>), NetworkError> {
    let mut ports: Vec<PortSpec> = Vec::new();
    let mut warnings = Vec::new();
    for attr in body.attributes() {
        let field = format!("{path}.{}", attr.key());
        match attr.key() {
            "mode" => {
                let mode = eval(attr.expr(), &Context::new()).unwrap_or(Value::Null);
                if mode.as_str() != Some("host") {
                    warnings.push(format!(
                        "{field} = {mode} is not emulated: tasks share the host's network, ports are assigned on the host"
                    ));
                }
            }
            _ => warnings.push(format!("{field} is ignored by elide-run")),
        }
    }
    for block in body.blocks() {
        let field = format!("{path}.{}", block.identifier());
        if block.identifier() != "port" {
            warnings.push(format!("{field} is ignored by elide-run"));
            continue;
        }
        let label = match block.labels() {
            [label] if !label.as_str().is_empty() => label.as_str().to_owned(),
            _ => {
                return Err(NetworkError {
                    field,
                    problem: "needs one label: port \"<label>\"".into(),
                })
            }
        };
        let field = format!("{field}.{label}");
        if ports.iter().any(|p| p.label == label) {
            return Err(NetworkError {
                field,
                problem: "is defined twice".into(),
            });
        }
        let mut spec = PortSpec {
            label,
            static_port: None,
            to: None,
        };
        for attr in block.body().attributes() {
            let field = format!("{field}.{}", attr.key());
            let number = || -> Result<u16, NetworkError> {
                let value = eval(attr.expr(), &Context::new()).map_err(|problem| NetworkError {
                    field: field.clone(),
                    problem,
                })?;
                value
                    .as_i64()
                    .and_then(|n| u16::try_from(n).ok())
                    .ok_or_else(|| NetworkError {
                        field: field.clone(),
                        problem: format!("must be a port number (0-65535), got {value}"),
                    })
            };
            match attr.key() {
                "static" => spec.static_port = Some(number()?).filter(|p| *p > 0),
                // Nomad: `to = -1` (or 0) means "the host port".
                "to" if eval(attr.expr(), &Context::new())
                    .ok()
                    .and_then(|v| v.as_i64())
                    .is_some_and(|n| n <= 0) => {}
                "to" => spec.to = Some(number()?),
                _ => warnings.push(format!("{field} is ignored by elide-run")),
            }
        }
        if let Some(to) = spec.to {
            warnings.push(format!(
                "{field}.to = {to}: the elide driver has no network namespace, so as on a Nomad client NOMAD_PORT_{} is {to} and the task binds it on the host; NOMAD_HOST_PORT_{} is the assigned port",
                spec.label, spec.label
            ));
        }
        ports.push(spec);
    }
    Ok((ports, warnings))
}

/// Chooses the host port of every spec: static ones as given, dynamic
/// ones free (bindable on all interfaces) and distinct. `random` draws a
/// candidate from the inclusive range it is given.
pub fn assign(
    specs: &[PortSpec],
    mut random: impl FnMut(u16, u16) -> u16,
) -> Result<Vec<AssignedPort>, String> {
    let mut taken: Vec<u16> = specs.iter().filter_map(|s| s.static_port).collect();
    let mut out = Vec::new();
    for spec in specs {
        let host_port = match spec.static_port {
            Some(port) => port,
            None => {
                let port = (0..DYNAMIC_PORT_ATTEMPTS)
                    .map(|_| random(MIN_DYNAMIC_PORT, MAX_DYNAMIC_PORT))
                    .find(|p| !taken.contains(p) && is_free(*p))
                    .ok_or_else(|| {
                        format!(
                            "port {:?}: no free dynamic port found in {MIN_DYNAMIC_PORT}-{MAX_DYNAMIC_PORT} after {DYNAMIC_PORT_ATTEMPTS} tries",
                            spec.label
                        )
                    })?;
                taken.push(port);
                port
            }
        };
        out.push(AssignedPort {
            label: spec.label.clone(),
            host_port,
            to: spec.to,
        });
    }
    Ok(out)
}

/// Whether nothing listens on `port` (TCP, all interfaces) right now.
fn is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
}

/// The `NOMAD_*` port variables of `ports`.
pub fn env(ports: &[AssignedPort]) -> Vec<(String, String)> {
    let mut vars = Vec::new();
    for p in ports {
        let host = p.host_port.to_string();
        let task = p.to.unwrap_or(p.host_port).to_string();
        let addr = format!("{HOST_IP}:{host}");
        let l = &p.label;
        vars.extend([
            (format!("NOMAD_PORT_{l}"), task.clone()),
            (format!("NOMAD_ALLOC_PORT_{l}"), task),
            (format!("NOMAD_HOST_PORT_{l}"), host),
            (format!("NOMAD_IP_{l}"), HOST_IP.to_owned()),
            (format!("NOMAD_HOST_IP_{l}"), HOST_IP.to_owned()),
            (format!("NOMAD_ADDR_{l}"), addr.clone()),
            (format!("NOMAD_HOST_ADDR_{l}"), addr),
        ]);
    }
    vars
}

/// Evaluates a literal attribute of a `network` block; the error names what
/// failed.
fn eval(expr: &hcl::Expression, ctx: &Context<'_>) -> Result<Value, String> {
    hcl::eval::Evaluate::evaluate(expr, ctx).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(text: &str) -> Result<(Vec<PortSpec>, Vec<String>), NetworkError> {
        let body: Body = hcl::parse(text).unwrap();
        parse(&body, "job.j.group.g.network")
    }

    #[test]
    fn reads_ports_with_static_and_to() {
        let (ports, warnings) = network(
            "mode = \"host\"\nport \"http\" {}\nport \"db\" {\n static = 5432\n}\nport \"web\" {\n to = 8080\n}\nport \"any\" {\n to = -1\n}",
        )
        .unwrap();
        let spec = |label: &str, static_port, to| PortSpec {
            label: label.into(),
            static_port,
            to,
        };
        assert_eq!(
            ports,
            [
                spec("http", None, None),
                spec("db", Some(5432), None),
                spec("web", None, Some(8080)),
                spec("any", None, None),
            ]
        );
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("NOMAD_PORT_web is 8080"),
            "{warnings:?}"
        );
    }

    #[test]
    fn mistakes_name_the_field() {
        let err = network("port \"http\" {\n static = 70000\n}").unwrap_err();
        assert_eq!(err.field, "job.j.group.g.network.port.http.static");
        assert!(err.problem.contains("70000"), "{err:?}");
        let err = network("port \"a\" {}\nport \"a\" {}").unwrap_err();
        assert_eq!(err.field, "job.j.group.g.network.port.a");
        let (_, warnings) = network("mode = \"bridge\"\ndns {}").unwrap();
        assert!(
            warnings[0].contains("mode = \"bridge\" is not emulated"),
            "{warnings:?}"
        );
        assert!(
            warnings[1].contains("network.dns is ignored"),
            "{warnings:?}"
        );
    }

    #[test]
    fn dynamic_ports_are_free_distinct_and_in_range() {
        // A listener on the first candidate: assignment must skip it.
        let busy = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let busy_port = busy.local_addr().unwrap().port();
        // Two distinct ports that are free once their listeners close.
        let (l1, l2) = (
            TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap(),
            TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap(),
        );
        let first = l1.local_addr().unwrap().port();
        let second = l2.local_addr().unwrap().port();
        drop((l1, l2));
        let mut candidates = vec![busy_port, first, first, second].into_iter();
        let specs = [
            PortSpec {
                label: "a".into(),
                static_port: None,
                to: None,
            },
            PortSpec {
                label: "b".into(),
                static_port: None,
                to: Some(8080),
            },
            PortSpec {
                label: "c".into(),
                static_port: Some(9999),
                to: None,
            },
        ];
        let assigned = assign(&specs, |_, _| candidates.next().unwrap()).unwrap();
        assert_eq!(assigned[0].host_port, first);
        assert_eq!(assigned[1].host_port, second);
        assert_eq!(assigned[2].host_port, 9999);
        let vars: std::collections::BTreeMap<_, _> = env(&assigned).into_iter().collect();
        assert_eq!(vars["NOMAD_PORT_a"], first.to_string());
        assert_eq!(vars["NOMAD_PORT_b"], "8080");
        assert_eq!(vars["NOMAD_HOST_PORT_b"], second.to_string());
        assert_eq!(vars["NOMAD_ADDR_c"], "127.0.0.1:9999");
        let real = assign(&specs[..1], |lo, hi| fastrand::u16(lo..=hi)).unwrap();
        assert!((MIN_DYNAMIC_PORT..=MAX_DYNAMIC_PORT).contains(&real[0].host_port));
        drop(busy);
    }
}
