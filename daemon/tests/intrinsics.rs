//! Intrinsics as permissions, enforced by the kernel: real snippets in
//! python, javascript and typescript on a real daemon, each denial failing
//! inside the snippet with the language's own permission error, each grant
//! working, and no way out through a child process. Warm (forked python
//! zygote child; node programs with rules start cold, see the sandbox
//! module) and cold start paths alike.

mod support;

use elide_proto::elide::daemon::v1 as pb;
use pb::ExecutionState as S;
use rstest::rstest;
use support::*;

/// Every intrinsic the kernel can restrict, granted.
const ALL: &[&str] = &["console", "env", "fs.read", "fs.write", "net", "subprocess"];

/// The session `name`, granting exactly `grants`.
async fn session(c: &mut Client, name: &str, grants: &[&str]) {
    create_session(
        c,
        name,
        pb::SessionConfig {
            enabled_intrinsics: grants.iter().map(|g| (*g).to_owned()).collect(),
            ..Default::default()
        },
    )
    .await;
}

/// Runs `code` in session `s` with working directory `work` and the
/// environment `SECRET=hunter2`; returns its stdout, after checking it
/// exited 0 (every snippet here catches its own errors).
async fn run(c: &mut Client, s: &str, id: &str, language: &str, code: &str, work: &str) -> String {
    let mut req = snippet(s, id, language, code);
    req.working_dir = work.into();
    req.env = env(&[("SECRET", "hunter2")]);
    let (status, stdout, stderr) = run_to_end(c, req).await;
    assert_eq!(
        (status.state(), status.exit_code),
        (S::Exited, Some(0)),
        "{language} {id}: {status:?}\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(status.warnings.is_empty(), "{:?}", status.warnings);
    stdout
}

/// One probe per intrinsic: the snippet in each language, what it prints
/// when denied and when granted. `PORT` is replaced by a port the test
/// listens on.
struct Probe {
    intrinsic: &'static str,
    python: &'static str,
    javascript: &'static str,
    typescript: &'static str,
    granted: &'static str,
}

const PROBES: &[Probe] = &[
    Probe {
        intrinsic: "fs.read",
        python: "try:\n    open('/etc/hostname').read()\n    print('read')\nexcept PermissionError as e:\n    print('denied', e.errno)\n",
        javascript: "try { require('fs').readFileSync('/etc/hostname'); console.log('read') } catch (e) { console.log('denied', e.code) }",
        typescript: "import * as fs from 'fs';\ntry { fs.readFileSync('/etc/hostname'); console.log('read') } catch (e: any) { console.log('denied', e.code) }",
        granted: "read\n",
    },
    Probe {
        intrinsic: "fs.write",
        python: "try:\n    open('out.txt', 'w').write('x')\n    print('wrote')\nexcept PermissionError as e:\n    print('denied', e.errno)\n",
        javascript: "try { require('fs').writeFileSync('out.txt', 'x'); console.log('wrote') } catch (e) { console.log('denied', e.code) }",
        typescript: "import { writeFileSync } from 'fs';\ntry { writeFileSync('out.txt', 'x'); console.log('wrote') } catch (e: any) { console.log('denied', e.code) }",
        granted: "wrote\n",
    },
    Probe {
        intrinsic: "net",
        python: "import socket\ntry:\n    socket.create_connection(('127.0.0.1', PORT), timeout=10).close()\n    print('connected')\nexcept PermissionError as e:\n    print('denied', e.errno)\n",
        javascript: "const s = require('net').connect(PORT, '127.0.0.1'); s.on('connect', () => { console.log('connected'); s.destroy() }); s.on('error', (e) => console.log('denied', e.code))",
        typescript: "import * as net from 'net';\nconst s: net.Socket = net.connect(PORT, '127.0.0.1'); s.on('connect', () => { console.log('connected'); s.destroy() }); s.on('error', (e: any) => console.log('denied', e.code))",
        granted: "connected\n",
    },
    Probe {
        intrinsic: "subprocess",
        python: "import subprocess\ntry:\n    print(subprocess.run(['/bin/echo', 'child ran'], capture_output=True, text=True).stdout, end='')\nexcept PermissionError as e:\n    print('denied', e.errno)\n",
        javascript: "const r = require('child_process').spawnSync('/bin/echo', ['child ran']); console.log(r.error ? 'denied ' + r.error.code : r.stdout.toString().trim())",
        typescript: "import { spawnSync } from 'child_process';\nconst r = spawnSync('/bin/echo', ['child ran']); const err: any = r.error; console.log(err ? 'denied ' + err.code : r.stdout.toString().trim())",
        granted: "child ran\n",
    },
    Probe {
        intrinsic: "env",
        python: "import os\nprint(','.join(sorted(os.environ)), os.environ.get('SECRET'))\n",
        javascript: "console.log(Object.keys(process.env).sort().join(','), process.env.SECRET)",
        typescript: "const names: string[] = Object.keys(process.env).sort(); console.log(names.join(','), process.env.SECRET)",
        granted: "",
    },
];

/// What a denial prints in each language: python's PermissionError errno,
/// node's error code.
fn denial(probe: &Probe, language: &str) -> String {
    match (probe.intrinsic, language) {
        ("env", "python") => "HOME,LANG,PATH,TMPDIR None\n".into(),
        ("env", _) => "HOME,LANG,PATH,TMPDIR undefined\n".into(),
        (_, "python") => "denied 13\n".into(),
        _ => "denied EACCES\n".into(),
    }
}

#[rstest]
#[tokio::test]
async fn each_intrinsic_is_denied_by_the_kernel_unless_granted(
    #[values(Start::Warm, Start::Cold)] start: Start,
    #[values("python", "javascript", "typescript")] language: &str,
) {
    let d = Daemon::start_as(start, &[]).await;
    let work = d.work_dir().display().to_string();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let mut c = d.client().await;
    let mut runs = 0;
    for probe in PROBES {
        let code = match language {
            "python" => probe.python,
            "javascript" => probe.javascript,
            _ => probe.typescript,
        }
        .replace("PORT", &port);
        let denied_name = format!("no-{}", probe.intrinsic);
        let others: Vec<&str> = ALL
            .iter()
            .copied()
            .filter(|i| *i != probe.intrinsic)
            .collect();
        session(&mut c, &denied_name, &others).await;
        let out = run(&mut c, &denied_name, "e", language, &code, &work).await;
        assert_eq!(
            out,
            denial(probe, language),
            "{language}, {} denied",
            probe.intrinsic
        );

        let granted_name = format!("with-{}", probe.intrinsic);
        session(&mut c, &granted_name, &["console", probe.intrinsic]).await;
        let out = run(&mut c, &granted_name, "e", language, &code, &work).await;
        let want = match (probe.intrinsic, language) {
            // The request's environment, as given, with the daemon's PATH
            // (and python's C locale coercion, PEP 538).
            ("env", "python") => "LC_CTYPE,PATH,SECRET hunter2\n",
            ("env", _) => "PATH,SECRET hunter2\n",
            _ => probe.granted,
        };
        assert_eq!(out, want, "{language}, {} granted alone", probe.intrinsic);
        runs += 2;
    }
    // Python forks of the zygote on a warm daemon; node programs under
    // rules always start cold (a pooled worker cannot enter them).
    let stats = daemon_stats(&mut c).await;
    let (warm, cold) = (
        count(&stats.warm_starts, language),
        count(&stats.cold_starts, language),
    );
    match (start, language) {
        (Start::Warm, "python") => assert_eq!((warm, cold), (runs, 0), "{stats:?}"),
        _ => assert_eq!((warm, cold), (0, runs), "{stats:?}"),
    }
}

#[rstest]
#[tokio::test]
async fn a_child_process_inherits_the_rules(#[values(Start::Warm, Start::Cold)] start: Start) {
    let d = Daemon::start_as(start, &[]).await;
    let work = d.work_dir().display().to_string();
    let mut c = d.client().await;
    // Granted subprocess, not net nor fs.read: its child is as confined.
    session(&mut c, "s", &["console", "subprocess"]).await;
    let python = "import subprocess, sys\nchild = 'import socket\\ntry:\\n    socket.create_connection((\"127.0.0.1\", 9))\\nexcept PermissionError as e:\\n    print(\"child net denied\", e.errno)\\ntry:\\n    open(\"/etc/hostname\")\\nexcept PermissionError as e:\\n    print(\"child read denied\", e.errno)\\n'\nprint(subprocess.run([sys.executable, '-c', child], capture_output=True, text=True).stdout, end='')\n";
    assert_eq!(
        run(&mut c, "s", "py", "python", python, &work).await,
        "child net denied 13\nchild read denied 13\n"
    );
    let javascript = "const child = \"const s = require('net').connect(9, '127.0.0.1'); s.on('error', (e) => console.log('child net denied', e.code))\"; const r = require('child_process').spawnSync(process.execPath, ['-e', child]); process.stdout.write(r.stdout.toString())";
    assert_eq!(
        run(&mut c, "s", "js", "javascript", javascript, &work).await,
        "child net denied EACCES\n"
    );
    // Denied subprocess: no exec of any program, not even its interpreter
    // on a warm start, nor /bin/sh through exec on either.
    session(&mut c, "closed", &["console"]).await;
    let python = "import os\ntry:\n    os.execv('/bin/sh', ['sh', '-c', 'echo escaped'])\nexcept PermissionError as e:\n    print('exec denied', e.errno)\n";
    assert_eq!(
        run(&mut c, "closed", "py", "python", python, &work).await,
        "exec denied 13\n"
    );
    let javascript = "const r = require('child_process').spawnSync('/bin/sh', ['-c', 'echo escaped']); console.log(r.error ? 'spawn denied ' + r.error.code : r.stdout.toString())";
    assert_eq!(
        run(&mut c, "closed", "js", "javascript", javascript, &work).await,
        "spawn denied EACCES\n"
    );
}

#[tokio::test]
async fn a_snippet_without_fs_write_still_has_its_scratch_directory() {
    let d = Daemon::start_as(Start::Warm, &[]).await;
    let mut c = d.client().await;
    session(&mut c, "s", &["console"]).await;
    // No working directory: it runs in its scratch directory, also HOME
    // and TMPDIR.
    let code = "import os, tempfile\nopen('here.txt', 'w').write('a')\nwith tempfile.NamedTemporaryFile('w') as f:\n    f.write('b')\nprint(open('here.txt').read(), os.getcwd() == os.environ['HOME'] == os.environ['TMPDIR'])\n";
    let (status, stdout, stderr) = run_to_end(&mut c, snippet("s", "e", "python", code)).await;
    assert_eq!(status.exit_code, Some(0), "{stderr}");
    assert_eq!(stdout, "a True\n");
}

#[tokio::test]
async fn capabilities_report_how_each_intrinsic_is_enforced() {
    let d = Daemon::start().await;
    let mut c = d.client().await;
    let caps = c
        .get_capabilities(pb::GetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let find = |name: &str| {
        caps.intrinsics
            .iter()
            .find(|i| i.name == name)
            .unwrap_or_else(|| panic!("{name} missing from {caps:?}"))
            .clone()
    };
    for (name, by) in [
        ("fs.read", "Landlock ABI"),
        ("fs.write", "Landlock ABI"),
        ("subprocess", "Landlock ABI"),
        ("net", "network namespace"),
        ("env", "minimal environment"),
        ("fs", "Landlock ABI"),
        ("http", "network namespace"),
    ] {
        let info = find(name);
        assert!(
            info.enforced && info.enforcement.contains(by),
            "this host cannot enforce {name} ({}); the sandbox needs Landlock ABI 3 or later and a root daemon for network namespaces",
            info.enforcement
        );
    }
    let console = find("console");
    assert!(
        !console.enforced && console.enforcement.contains("always"),
        "{console:?}"
    );
}
