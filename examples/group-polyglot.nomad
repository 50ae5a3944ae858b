# One group, two tasks in two languages, running concurrently in one
# allocation and sharing its alloc/ directory.
#   elide-run examples/group-polyglot.nomad
job "group-polyglot" {
  type = "batch"

  group "poly" {
    task "py" {
      driver = "elide"

      config {
        language = "python"
        code     = <<EOF
import os
print("python sees alloc", os.environ["NOMAD_ALLOC_ID"][:8], "group", os.environ["NOMAD_GROUP_NAME"])
EOF
      }
    }

    task "js" {
      driver = "elide"

      config {
        language = "javascript"
        code     = <<EOF
console.log(`javascript sees alloc $${process.env.NOMAD_ALLOC_ID.slice(0, 8)} group $${process.env.NOMAD_GROUP_NAME}`);
EOF
      }
    }
  }
}
