//! TypeScript through a real daemon: transpiled in the daemon, run by real
//! node on the warm and the cold path.

mod support;

use elide_proto::elide::daemon::v1 as pb;
use pb::ExecutionState as S;
use rstest::rstest;
use support::*;

#[rstest]
#[tokio::test]
async fn typescript_features_run_as_their_javascript_meaning(
    #[values(Start::Warm, Start::Cold)] path: Start,
) {
    let d = Daemon::start_as(path, &[]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", every_grant()).await;
    let code = r#"import type { Stats } from 'node:fs';
import { type PathLike } from 'node:fs';
interface Point { x: number; y: number }
type Pair<T> = [T, T];
enum Color { Red, Green = 5, Blue }
enum Word { Hi = 'hello' }
const enum Flag { On = 1 }
namespace Geometry {
  export namespace Inner { export const origin: Point = { x: 0, y: 0 }; }
  export function norm(p: Point): number { return Math.abs(p.x) + Math.abs(p.y); }
}
class Box<T> {
  constructor(private readonly value: T, public label: string) {}
  get(): T { return this.value; }
}
function first<T>(pair: Pair<T>): T { return pair[0]; }
const p = { x: 3, y: -4 } satisfies Point;
const raw: unknown = '42';
const n = (raw as string).length;
let stat: Stats | undefined;
const where: PathLike = '.';
const fs = require('node:fs') as typeof import('node:fs');
console.log(Color.Green, Color[6], Word.Hi, Flag.On);
console.log(Geometry.norm(p), Geometry.Inner.origin.x, first<string>(['a', 'b']));
console.log(new Box<number>(7, 'seven').get(), n, stat, where, typeof fs.readFileSync);
"#;
    let (status, stdout, stderr) = run_to_end(&mut c, snippet("s", "ts", "typescript", code)).await;
    assert_eq!(
        (status.state(), status.exit_code),
        (S::Exited, Some(0)),
        "{stderr}"
    );
    assert_eq!(stdout, "5 Blue hello 1\n7 0 a\n7 2 undefined . function\n");
    assert_started_on(&mut c, path, "typescript", 1).await;
}

#[rstest]
#[tokio::test]
async fn typescript_with_imports_runs_as_an_es_module(
    #[values(Start::Warm, Start::Cold)] path: Start,
) {
    let d = Daemon::start_as(path, &[]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", every_grant()).await;
    let code = "import { basename } from 'node:path';\n\
                const name: string = basename(new URL(import.meta.url).pathname);\n\
                const value: number = await Promise.resolve(1);\n\
                console.log(name, typeof require, value, process.argv.slice(2).join(','));\n";
    let mut req = snippet("s", "esm", "typescript", code);
    req.source_name = "local/main.ts".into();
    req.args = vec!["a".into(), "b".into()];
    let (status, stdout, stderr) = run_to_end(&mut c, req).await;
    assert_eq!(status.exit_code, Some(0), "{stderr}");
    assert_eq!(stdout, "main.mjs undefined 1 a,b\n");
    assert_started_on(&mut c, path, "typescript", 1).await;
}

#[tokio::test]
async fn a_syntax_error_is_the_programs_failure_with_line_and_column() {
    let d = Daemon::start_as(Start::Warm, &[]).await;
    let mut c = d.client().await;
    create_session(&mut c, "s", every_grant()).await;
    let mut req = snippet(
        "s",
        "bad",
        "typescript",
        "const fine: number = 1;\nlet broken: = 2;\n",
    );
    req.source_name = "local/main.ts".into();
    let accepted = c
        .execute_snippet(req)
        .await
        .expect("the request itself is fine");
    assert!(accepted.into_inner().created);
    let status = wait_terminal(&mut c, "s", "bad").await;
    assert_eq!(
        (status.state(), status.exit_code),
        (S::Exited, Some(1)),
        "{status:?}"
    );
    let out = read_output(&mut c, "s", "bad", (0, 0), false).await;
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.starts_with("main.ts:2:13: "), "{stderr}");
    assert!(
        stderr.ends_with('\n') && stderr.lines().count() == 1,
        "{stderr}"
    );
}

#[tokio::test]
async fn capabilities_say_how_typescript_and_javascript_start() {
    let warm = Daemon::start_as(Start::Warm, &[]).await;
    let cold = Daemon::start_as(Start::Cold, &[]).await;
    for (d, mode, detail) in [
        (&warm, pb::StartMode::Pool, "node pool of 2 per daemon"),
        (&cold, pb::StartMode::Cold, ""),
    ] {
        let caps = d
            .client()
            .await
            .get_capabilities(pb::GetCapabilitiesRequest {})
            .await
            .unwrap()
            .into_inner();
        for lang in ["javascript", "typescript"] {
            let l = caps.languages.iter().find(|l| l.language == lang).unwrap();
            assert!(l.available, "{l:?}");
            assert_eq!(
                (l.runtime.as_str(), l.start_mode()),
                ("node", mode),
                "{l:?}"
            );
            assert!(l.start_detail.contains(detail), "{l:?}");
        }
        let ts = caps
            .languages
            .iter()
            .find(|l| l.language == "typescript")
            .unwrap();
        assert!(
            ts.start_detail
                .starts_with("transpiled in the daemon by oxc"),
            "{ts:?}"
        );
    }
}
