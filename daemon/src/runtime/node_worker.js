// A pooled node worker: booted ahead of time by elide-daemon, it runs
// exactly one program and then ends with it.
//
// fd 3 is a socket to the daemon. The worker writes one byte once node has
// booted, then blocks until the daemon sends one job (JSON, ended by the
// daemon closing its side) or closes without one (the pool is shrinking).
// It then makes the process look as `node FILE ARGS...` would have started
// it: exactly the job's environment, working directory and argv, and the
// file loaded as the main module by node's own entry point (CommonJS or ES
// module, decided as node decides). Stdin is /dev/null and stdout/stderr are
// the daemon's pipes from the start; this script writes nothing to them.
'use strict';

const fs = require('fs');
const Module = require('module');

const CONTROL_FD = 3;

// Node builds process.stdout/stderr and compiles its write and format paths
// lazily, on a program's first console.log: about 4 ms, more than the rest
// of a warm start. Done here, before the worker says it is ready, every
// program finds them built. The streams are the daemon's pipes, the same fds
// a program writes to; a zero-length write puts nothing in a pipe.
process.stdout.write('');
process.stderr.write('');
require('util').formatWithOptions({}, '%s %d %j %o', 'x', 1, { a: 1 }, [1]);

fs.writeSync(CONTROL_FD, 'R');
const parts = [];
const buffer = Buffer.alloc(64 * 1024);
for (;;) {
  let n;
  try {
    n = fs.readSync(CONTROL_FD, buffer, 0, buffer.length, null);
  } catch (e) {
    if (e.code === 'EINTR' || e.code === 'EAGAIN') continue;
    throw e;
  }
  if (n === 0) break;
  parts.push(Buffer.from(buffer.subarray(0, n)));
}
fs.closeSync(CONTROL_FD);
if (parts.length === 0) process.exit(0);
const job = JSON.parse(Buffer.concat(parts).toString('utf8'));

// process.env writes go through to the real environment (setenv), so child
// processes inherit exactly this environment too.
for (const key of Object.keys(process.env)) delete process.env[key];
for (const [key, value] of Object.entries(job.env)) process.env[key] = value;
// Module search paths depend on HOME and NODE_PATH, read at boot.
if (typeof Module._initPaths === 'function') Module._initPaths();
process.chdir(job.cwd);
process.argv = [process.argv[0], job.file, ...job.args];
Module.runMain(job.file);
