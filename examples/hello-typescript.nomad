# A batch job whose TypeScript script is written by a template block. The
# daemon turns it into JavaScript itself and runs it on node: the types,
# the interface, the enum and the namespace below need no other tool.
#   elide-run examples/hello-typescript.nomad
job "hello-typescript" {
  type        = "batch"
  datacenters = ["dc1"]

  group "hello" {
    task "hello" {
      driver = "elide"

      template {
        destination = "local/hello.ts"
        data        = <<EOF
interface Greeting { who: string; times: number }
enum Mood { Calm = "calm", Busy = "busy" }
namespace Nomad {
  export function task(): string { return process.env.NOMAD_TASK_NAME ?? "?"; }
}
const greeting: Greeting = { who: "typescript", times: 1 } satisfies Greeting;
console.log(`hello from $${greeting.who} on node $${process.versions.node}`);
console.log(`task $${Nomad.task()} is $${Mood.Calm}`);
EOF
      }

      config {
        script = "local/hello.ts"
      }

      resources {
        cpu    = 100
        memory = 128
      }
    }
  }
}
