//! A deterministic runtime: "programs" in a tiny language, run on
//! `tokio::time` (virtual time under a paused test clock or turmoil).
//!
//! It stands in for real interpreters wherever a test or a simulation needs
//! programs that behave exactly the same on every run. One instruction per
//! line; blank lines and `#` comments are ignored:
//!
//! | line | effect |
//! |---|---|
//! | `print TEXT` / `eprint TEXT` | write `TEXT\n` to stdout / stderr |
//! | `sleep DURATION` | wait, e.g. `sleep 3s`, `sleep 250ms` |
//! | `flood SIZE` | write SIZE bytes (`10MB`, `64KiB`, `1000`) to stdout in 64 KiB chunks |
//! | `memory SIZE` | report SIZE as resident memory from now on; over the spec's memory limit, the program is OOM-killed |
//! | `trap SIG DURATION [CODE]` | on SIG: wait DURATION, then exit with CODE (default 0) |
//! | `ignore SIG` | SIG has no effect |
//! | `exit CODE` | end with CODE |
//!
//! A program that runs off its end exits 0. A signal that is neither trapped
//! nor ignored ends the program with that signal; SIGKILL always does.
//! Memory over `ProgramSpec::memory_limit_bytes` is what a cgroup's limit
//! would make of it: the kernel's OOM killer takes the program, so it
//! reports [`KernelLimit::OomKilled`] (one kill, as the real runtime reads
//! from the cgroup's `oom_kill` count) and ends by SIGKILL at once. A
//! [`ScriptedRuntime::sampling_memory`] runtime is a daemon without memory
//! cgroups instead: it reports [`ProgramEvent::MemoryExceeded`], as the
//! process runtime's sampler does, and the program runs on until the
//! daemon's SIGKILL.
//! The flood pattern is byte `i % 251` at stream offset `i`, so a reader can
//! check every byte.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{
    ExitInfo, KernelLimit, LanguageRuntime, Metrics, Program, ProgramControl, ProgramEvent,
    ProgramSpec, Runtime, RuntimeError,
};
use crate::language::Language;
use crate::output::Stream;
use crate::signal::parse_signal;

/// Bytes per output event of `flood`.
const FLOOD_CHUNK: u64 = 64 * 1024;

/// One instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    /// Write a line to a stream.
    Print(Stream, String),
    /// Wait.
    Sleep(Duration),
    /// Write this many pattern bytes to stdout.
    Flood(u64),
    /// Report this resident memory.
    Memory(u64),
    /// Handle a signal: wait, then exit with the code.
    Trap(Signal, Duration, i32),
    /// Ignore a signal.
    Ignore(Signal),
    /// End with a code.
    Exit(i32),
}

/// The byte `flood` writes at stream offset `offset`.
pub fn flood_byte(offset: u64) -> u8 {
    (offset % 251) as u8
}

/// Parses a program; the error names the line.
pub fn parse_program(source: &str) -> Result<Vec<Instruction>, String> {
    let mut program = Vec::new();
    for (n, raw) in source.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (op, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        let err = |what: String| format!("line {}: {what}: {line:?}", n + 1);
        let args: Vec<&str> = rest.split_whitespace().collect();
        let sig = |s: &str| parse_signal(s).map_err(|e| err(e.to_string()));
        let code = |s: &str| {
            s.parse::<i32>()
                .map_err(|_| err(format!("bad exit code {s:?}")))
        };
        let instr = match op {
            "print" => Instruction::Print(Stream::Stdout, rest.to_string()),
            "eprint" => Instruction::Print(Stream::Stderr, rest.to_string()),
            "sleep" => Instruction::Sleep(parse_duration(rest).map_err(err)?),
            "flood" => Instruction::Flood(parse_size(rest).map_err(err)?),
            "memory" => Instruction::Memory(parse_size(rest).map_err(err)?),
            "ignore" => Instruction::Ignore(sig(rest)?),
            "exit" => Instruction::Exit(code(rest)?),
            "trap" => match args.as_slice() {
                [s, d] => Instruction::Trap(sig(s)?, parse_duration(d).map_err(err)?, 0),
                [s, d, c] => Instruction::Trap(sig(s)?, parse_duration(d).map_err(err)?, code(c)?),
                _ => return Err(err("expected `trap SIG DURATION [CODE]`".into())),
            },
            _ => return Err(err(format!("unknown instruction {op:?}"))),
        };
        program.push(instr);
    }
    Ok(program)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    elide_proto::go_duration::parse(s).map_err(|e| format!("bad duration: {e}"))
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1000,
        "KiB" => 1024,
        "MB" => 1000 * 1000,
        "MiB" => 1024 * 1024,
        "GB" => 1000 * 1000 * 1000,
        _ => return Err(format!("bad size unit in {s:?}")),
    };
    Ok(n * mult)
}

/// Runs scripted programs; every language is "available".
///
/// By default memory over the limit is met as a cgroup would meet it (the
/// kernel's OOM kill, [`KernelLimit::OomKilled`]). [`Self::sampling_memory`]
/// makes it a daemon without a memory cgroup instead: the program reports
/// [`ProgramEvent::MemoryExceeded`] and runs on until the daemon kills it.
#[derive(Debug, Default, Clone)]
pub struct ScriptedRuntime {
    sampled_memory: bool,
}

impl ScriptedRuntime {
    /// Memory limits met by sampling, as the process runtime does where
    /// no memory cgroup can be made.
    pub fn sampling_memory() -> Self {
        ScriptedRuntime {
            sampled_memory: true,
        }
    }
}

impl Runtime for ScriptedRuntime {
    fn languages(&self) -> Vec<LanguageRuntime> {
        Language::ALL
            .iter()
            .map(|&language| LanguageRuntime {
                language,
                runtime: "scripted".into(),
                version: "1".into(),
                unavailable_reason: None,
                start_mode: super::StartMode::Cold,
                start_detail: String::new(),
            })
            .collect()
    }

    fn enforces_intrinsics(&self) -> bool {
        false
    }

    fn memory_enforcement(&self) -> super::MemoryEnforcement {
        if self.sampled_memory {
            super::MemoryEnforcement::Sampled("scripted: sampled, no cgroup".into())
        } else {
            super::MemoryEnforcement::Enforced("scripted: as a cgroup's limit".into())
        }
    }

    fn spawn(&self, spec: ProgramSpec) -> Result<Program, RuntimeError> {
        let program = parse_program(&spec.code).map_err(|e| RuntimeError::Spawn {
            what: format!("scripted program {}", spec.execution_id),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        })?;
        let (events, rx) = mpsc::channel(64);
        let (signals, signal_rx) = mpsc::unbounded_channel();
        let control = Arc::new(ScriptedControl {
            signals,
            state: Mutex::new(Metrics {
                live: true,
                process_count: 1,
                measured: crate::runtime::measured::PROCFS,
                ..Metrics::default()
            }),
            started: Instant::now(),
        });
        tokio::spawn(interpret(
            program,
            MemoryLimit {
                bytes: spec.memory_limit_bytes,
                sampled: self.sampled_memory,
            },
            events,
            signal_rx,
            control.clone(),
        ));
        Ok(Program {
            events: rx,
            control,
            warm: false,
        })
    }
}

struct ScriptedControl {
    signals: mpsc::UnboundedSender<Signal>,
    state: Mutex<Metrics>,
    started: Instant,
}

impl ScriptedControl {
    fn update(&self, f: impl FnOnce(&mut Metrics)) {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

impl ProgramControl for ScriptedControl {
    fn signal(&self, sig: Signal) -> Result<(), RuntimeError> {
        // After the program ended the receiver is gone: not an error.
        let _ = self.signals.send(sig);
        Ok(())
    }

    fn metrics(&self) -> Metrics {
        let mut m = *self.state.lock().unwrap_or_else(|p| p.into_inner());
        if m.live {
            // Simulated CPU: a tenth of the time it has been running.
            m.cpu_user = self.started.elapsed() / 10;
        }
        m
    }
}

/// What a received signal does to the program.
enum Reaction {
    Continue,
    End(ExitInfo),
    /// Trapped: exit with the code after the delay (more signals may come).
    Trapped(Duration, i32),
}

fn react(sig: Signal, traps: &BTreeMap<i32, (Duration, i32)>, ignored: &[Signal]) -> Reaction {
    if sig == Signal::SIGKILL {
        return Reaction::End(ExitInfo::Signal(sig));
    }
    if let Some((delay, code)) = traps.get(&(sig as i32)) {
        return Reaction::Trapped(*delay, *code);
    }
    if ignored.contains(&sig)
        || matches!(
            sig,
            Signal::SIGCHLD | Signal::SIGWINCH | Signal::SIGURG | Signal::SIGCONT
        )
    {
        return Reaction::Continue;
    }
    Reaction::End(ExitInfo::Signal(sig))
}

/// A program's memory limit, and who meets it.
struct MemoryLimit {
    bytes: Option<u64>,
    /// The daemon's sampler (it kills the program) rather than the kernel.
    sampled: bool,
}

async fn interpret(
    program: Vec<Instruction>,
    memory_limit: MemoryLimit,
    events: mpsc::Sender<ProgramEvent>,
    mut signals: mpsc::UnboundedReceiver<Signal>,
    control: Arc<ScriptedControl>,
) {
    let mut traps = BTreeMap::new();
    let mut ignored = Vec::new();
    let mut exit = ExitInfo::Code(0);
    // When trapped: the moment the handler exits, and with what code.
    let mut trapped: Option<(Instant, i32)> = None;
    let mut pc = 0;
    let mut flood_left = 0u64;
    let mut flood_offset = 0u64;
    'run: loop {
        if let Some((at, code)) = trapped {
            tokio::select! {
                biased;
                Some(sig) = signals.recv() => {
                    if sig == Signal::SIGKILL {
                        exit = ExitInfo::Signal(sig);
                        break 'run;
                    }
                }
                _ = tokio::time::sleep_until(at) => {
                    exit = ExitInfo::Code(code);
                    break 'run;
                }
            }
            continue;
        }
        // The next step of the program, interruptible by signals.
        let step: Option<Instruction> = if flood_left > 0 {
            None
        } else if pc < program.len() {
            pc += 1;
            Some(program[pc - 1].clone())
        } else {
            break 'run;
        };
        let sleep_for = match &step {
            Some(Instruction::Sleep(d)) => Some(*d),
            _ => None,
        };
        match step {
            Some(Instruction::Print(stream, text)) => {
                let _ = events
                    .send(ProgramEvent::Output(
                        stream,
                        format!("{text}\n").into_bytes(),
                    ))
                    .await;
            }
            Some(Instruction::Flood(n)) => flood_left = n,
            Some(Instruction::Memory(n)) => {
                control.update(|m| {
                    m.rss_bytes = n;
                    m.peak_rss_bytes = m.peak_rss_bytes.max(n);
                });
                let over = memory_limit.bytes.filter(|limit| n > *limit);
                if over.is_some() && memory_limit.sampled {
                    // The daemon's sampler sees it and kills the program;
                    // until its SIGKILL arrives the program runs on.
                    let _ = events
                        .send(ProgramEvent::MemoryExceeded { rss_bytes: n })
                        .await;
                } else if let Some(limit) = over {
                    // The kernel's OOM kill at the cgroup limit: no signal
                    // the program could trap, no grace.
                    let _ = events
                        .send(ProgramEvent::KernelLimit(KernelLimit::OomKilled {
                            kills: 1,
                            limit_bytes: Some(limit),
                            peak_bytes: Some(n),
                            cgroup: "scripted".into(),
                        }))
                        .await;
                    exit = ExitInfo::Signal(Signal::SIGKILL);
                    break 'run;
                }
            }
            Some(Instruction::Trap(sig, d, code)) => {
                traps.insert(sig as i32, (d, code));
            }
            Some(Instruction::Ignore(sig)) => ignored.push(sig),
            Some(Instruction::Exit(code)) => {
                exit = ExitInfo::Code(code);
                break 'run;
            }
            Some(Instruction::Sleep(_)) => {}
            None => {
                let n = flood_left.min(FLOOD_CHUNK);
                let chunk: Vec<u8> = (flood_offset..flood_offset + n).map(flood_byte).collect();
                flood_offset += n;
                flood_left -= n;
                let _ = events
                    .send(ProgramEvent::Output(Stream::Stdout, chunk))
                    .await;
                // Let other hosts and tasks run between chunks.
                tokio::task::yield_now().await;
            }
        }
        // Signals that arrived meanwhile, and the sleep if there is one.
        let deadline = sleep_for.map(|d| Instant::now() + d);
        loop {
            let sig = match deadline {
                Some(at) => tokio::select! {
                    biased;
                    Some(sig) = signals.recv() => sig,
                    _ = tokio::time::sleep_until(at) => break,
                },
                None => match signals.try_recv() {
                    Ok(sig) => sig,
                    Err(_) => break,
                },
            };
            match react(sig, &traps, &ignored) {
                Reaction::Continue => {}
                Reaction::End(info) => {
                    exit = info;
                    break 'run;
                }
                Reaction::Trapped(delay, code) => {
                    trapped = Some((Instant::now() + delay, code));
                    continue 'run;
                }
            }
        }
    }
    control.update(|m| {
        m.live = false;
        m.rss_bytes = 0;
        m.process_count = 0;
    });
    let _ = events.send(ProgramEvent::Exited(exit)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_instruction_and_names_bad_lines() {
        let p = parse_program("# comment\nprint hello world\neprint oops\nsleep 3s\nflood 2MiB\nmemory 10MB\ntrap TERM 1s 3\nignore INT\nexit 2\n").unwrap();
        assert_eq!(p.len(), 8);
        assert_eq!(
            p[0],
            Instruction::Print(Stream::Stdout, "hello world".into())
        );
        assert_eq!(p[3], Instruction::Flood(2 * 1024 * 1024));
        assert_eq!(
            p[5],
            Instruction::Trap(Signal::SIGTERM, Duration::from_secs(1), 3)
        );
        let err = parse_program("print ok\njump 3\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }

    /// A Python program `code` under `execution_id`, with nothing else set
    /// but its memory limit.
    fn spec_of(execution_id: &str, code: &str, memory_limit_bytes: Option<u64>) -> ProgramSpec {
        ProgramSpec {
            execution_id: execution_id.into(),
            language: Language::Python,
            code: code.into(),
            source_name: String::new(),
            args: vec![],
            env: Default::default(),
            working_dir: "/".into(),
            run_as_user: String::new(),
            scratch_dir: "/".into(),
            memory_limit_bytes,
            nomad_cgroup: None,
            intrinsics: vec![],
            enable_ai: false,
        }
    }

    async fn run(
        code: &str,
        signals: &[(Duration, Signal)],
    ) -> (Vec<u8>, Vec<u8>, ExitInfo, Duration) {
        let spec = spec_of("t", code, None);
        let start = Instant::now();
        let mut p = ScriptedRuntime::default().spawn(spec).unwrap();
        for (at, sig) in signals.iter().copied() {
            let control = p.control.clone();
            tokio::spawn(async move {
                tokio::time::sleep(at).await;
                control.signal(sig).unwrap();
            });
        }
        let (mut out, mut err) = (Vec::new(), Vec::new());
        loop {
            match p.events.recv().await.unwrap() {
                ProgramEvent::Output(Stream::Stdout, d) => out.extend(d),
                ProgramEvent::Output(Stream::Stderr, d) => err.extend(d),
                ProgramEvent::MemoryExceeded { .. } | ProgramEvent::KernelLimit(_) => {}
                ProgramEvent::Exited(info) => return (out, err, info, start.elapsed()),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn prints_sleeps_and_exits_on_virtual_time() {
        let (out, err, exit, took) = run("print a\neprint b\nsleep 3s\nprint c\nexit 4", &[]).await;
        assert_eq!(
            (out.as_slice(), err.as_slice()),
            (&b"a\nc\n"[..], &b"b\n"[..])
        );
        assert_eq!(exit, ExitInfo::Code(4));
        assert_eq!(took, Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn signals_end_trap_or_are_ignored() {
        let (_, _, exit, took) =
            run("sleep 60s", &[(Duration::from_secs(2), Signal::SIGTERM)]).await;
        assert_eq!(
            (exit, took),
            (ExitInfo::Signal(Signal::SIGTERM), Duration::from_secs(2))
        );
        let (out, _, exit, took) = run(
            "trap TERM 1s 0\nprint ready\nsleep 60s",
            &[(Duration::from_secs(2), Signal::SIGTERM)],
        )
        .await;
        assert_eq!(
            (out.as_slice(), exit, took),
            (&b"ready\n"[..], ExitInfo::Code(0), Duration::from_secs(3))
        );
        let (_, _, exit, took) = run(
            "ignore TERM\nsleep 60s",
            &[
                (Duration::from_secs(1), Signal::SIGTERM),
                (Duration::from_secs(5), Signal::SIGKILL),
            ],
        )
        .await;
        assert_eq!(
            (exit, took),
            (ExitInfo::Signal(Signal::SIGKILL), Duration::from_secs(5))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn flood_writes_the_checkable_pattern() {
        let (out, _, exit, _) = run("flood 200KiB\nprint end", &[]).await;
        assert_eq!(exit, ExitInfo::Code(0));
        assert_eq!(out.len(), 200 * 1024 + 4);
        assert!(out[..200 * 1024]
            .iter()
            .enumerate()
            .all(|(i, b)| *b == flood_byte(i as u64)));
    }

    /// The events of `code` under a 64 MiB limit on `runtime`, until it
    /// exits; a memory sample over the limit is answered with SIGKILL, as
    /// the daemon answers it.
    async fn memory_events(runtime: ScriptedRuntime, code: &str) -> Vec<String> {
        let spec = spec_of("m", code, Some(64 << 20));
        let mut p = runtime.spawn(spec).unwrap();
        let mut seen = Vec::new();
        loop {
            match p.events.recv().await.unwrap() {
                ProgramEvent::Output(_, d) => seen.push(String::from_utf8(d).unwrap()),
                ProgramEvent::MemoryExceeded { rss_bytes } => {
                    seen.push(format!("sampled {}MiB", rss_bytes >> 20));
                    p.control.signal(Signal::SIGKILL).unwrap();
                }
                ProgramEvent::KernelLimit(KernelLimit::OomKilled { kills, .. }) => {
                    seen.push(format!("oom kills={kills}"))
                }
                ProgramEvent::KernelLimit(_) => seen.push("other limit".into()),
                ProgramEvent::Exited(info) => {
                    seen.push(format!("{info:?}"));
                    return seen;
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn memory_over_the_limit_is_a_kernel_kill_or_a_sample_the_daemon_acts_on() {
        let code = "memory 10MiB\nprint a\nmemory 100MiB\nprint b\nsleep 10s\nprint c";
        let kernel = memory_events(ScriptedRuntime::default(), code).await;
        assert_eq!(kernel, ["a\n", "oom kills=1", "Signal(SIGKILL)"]);
        // Sampled: the program runs on (prints `b`) until the daemon's kill.
        let sampled = memory_events(ScriptedRuntime::sampling_memory(), code).await;
        assert_eq!(sampled, ["a\n", "sampled 100MiB", "b\n", "Signal(SIGKILL)"]);
        assert!(matches!(
            ScriptedRuntime::sampling_memory().memory_enforcement(),
            super::super::MemoryEnforcement::Sampled(_)
        ));
    }
}
