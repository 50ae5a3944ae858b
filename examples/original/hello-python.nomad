# The original Elide task driver's "Example 1: Hello Python", as written.
#   elide-run --agent-config examples/original/nomad-agent.hcl examples/original/hello-python.nomad
job "hello-python" {
  datacenters = ["dc1"]
  type = "batch"
  
  group "python" {
    count = 1
    
    task "hello" {
      driver = "elide"
      
      config {
        script   = "local/hello.py"
        language = "python"
        
        # NOTE: elide_opts are reserved for future use when daemon supports
        # per-task configuration overrides. Currently, all tasks use session-level
        # configuration. See API_QUESTIONS.md for details.
        # elide_opts {
        #   memory_limit = 128
        #   enable_ai    = false
        # }
      }
      
      # Inline the script
      template {
        data = <<EOF
#!/usr/bin/env python3
print("Hello from Elide on Nomad!")
print("This is a polyglot runtime")
EOF
        destination = "local/hello.py"
        perms = "755"
      }
      
      resources {
        cpu    = 100
        memory = 128
      }
    }
  }
}
