# Environment (task env block, config env, NOMAD_* interpolation) and
# program arguments.
#   elide-run examples/env-and-args.nomad
job "env-and-args" {
  type = "batch"

  group "demo" {
    task "show" {
      driver = "elide"

      env {
        GREETING  = "hello"
        DATA_FILE = "${NOMAD_ALLOC_DIR}/data/out.txt"
      }

      config {
        language = "python"
        args     = ["first", "second arg", "${NOMAD_TASK_NAME}"]
        env = {
          TARGET = "nomad"
        }
        code = <<EOF
import os, sys
print("GREETING=" + os.environ["GREETING"])
print("TARGET=" + os.environ["TARGET"])
print("args=" + repr(sys.argv[1:]))
print("data file under alloc dir:", os.environ["DATA_FILE"].startswith(os.environ["NOMAD_ALLOC_DIR"]))
print("to stderr", file=sys.stderr)
EOF
      }
    }
  }
}
