# A batch job running inline JavaScript. In HCL, `${…}` is interpolation:
# JavaScript template literals are written `$${…}` so they reach node as `${…}`.
#   elide-run examples/hello-javascript.nomad
job "hello-javascript" {
  type        = "batch"
  datacenters = ["dc1"]

  group "hello" {
    task "hello" {
      driver = "elide"

      config {
        language = "javascript"
        code     = <<EOF
console.log(`hello from javascript $${process.version}`);
console.log(`alloc $${process.env.NOMAD_ALLOC_NAME}, memory limit $${process.env.NOMAD_MEMORY_LIMIT} MB`);
EOF
      }

      resources {
        memory = 96
      }
    }
  }
}
