# A batch job whose Python script is written by a template block.
#   elide-run examples/hello-python.nomad
job "hello-python" {
  type        = "batch"
  datacenters = ["dc1"]

  group "hello" {
    task "hello" {
      driver = "elide"

      template {
        destination = "local/hello.py"
        data        = <<EOF
import os
import sys

print(f"hello from python {sys.version_info.major}.{sys.version_info.minor}")
print("task", os.environ["NOMAD_TASK_NAME"], "of job", os.environ["NOMAD_JOB_NAME"])
print("script written by a template into", os.environ["NOMAD_TASK_DIR"])
EOF
      }

      config {
        script = "local/hello.py"
      }

      resources {
        cpu    = 100
        memory = 128
      }
    }
  }
}
