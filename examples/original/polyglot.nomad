# The original Elide task driver's "Example 4: Polyglot Application", as
# written. Calling JavaScript from Python needs the Elide runtime, which
# this project cannot install: the daemon refuses it at StartTask, naming
# the polyglot module, and elide-run exits 1.
#   elide-run --agent-config examples/original/nomad-agent.hcl examples/original/polyglot.nomad
job "polyglot-demo" {
  datacenters = ["dc1"]
  
  group "app" {
    task "main" {
      driver = "elide"
      
      config {
        script   = "local/main.py"
        language = "python"  # Can use any language enabled in session_config
        
        # NOTE: elide_opts are reserved for future use when daemon supports
        # per-task configuration overrides. Currently, all tasks use session-level
        # configuration. Ensure all needed languages are in session's enabled_languages.
        # See API_QUESTIONS.md for details.
        # elide_opts {
        #   memory_limit = 1024
        # }
      }
      
      # Python calls JavaScript calls Kotlin
      template {
        data = <<EOF
import polyglot

# Load JavaScript helper
js_helper = polyglot.eval(language='js', string='''
  export function processData(data) {
    return data.map(x => x * 2);
  }
''')

# Use JavaScript from Python
data = [1, 2, 3, 4, 5]
result = js_helper.processData(data)
print(f"Processed: {result}")
EOF
        destination = "local/main.py"
      }
    }
  }
}
