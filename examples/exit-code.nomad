# A task that fails with exit code 3; elide-run exits with 3 too.
#   elide-run examples/exit-code.nomad; echo $?
job "exit-code" {
  type = "batch"

  group "fail" {
    task "fail" {
      driver = "elide"

      config {
        language = "python"
        code     = <<EOF
import sys
print("about to exit with 3")
print("something went wrong", file=sys.stderr)
sys.exit(3)
EOF
      }
    }
  }
}
