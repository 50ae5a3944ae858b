# The original Elide task driver's "Example 3: AI Inference", as written.
# It needs the Elide runtime (Python's polyglot module and elide:llm), which
# this project cannot install: the daemon refuses it at StartTask, naming
# both, and elide-run exits 1.
#   elide-run --agent-config examples/original/nomad-agent.hcl examples/original/ai-inference.nomad
job "ai-worker" {
  datacenters = ["dc1"]
  type = "service"
  
  group "inference" {
    count = 2
    
    task "ai" {
      driver = "elide"
      
      config {
        script   = "local/inference.py"
        language = "python"
        
        # NOTE: elide_opts are reserved for future use when daemon supports
        # per-task configuration overrides. Currently, all tasks use session-level
        # configuration. For AI features, ensure enable_ai = true in session_config.
        # See API_QUESTIONS.md for details.
        # elide_opts {
        #   memory_limit = 2048
        #   enable_ai    = true
        # }
      }
      
      template {
        data = <<EOF
# AI inference script using Elide's local AI
import polyglot

# Load Elide's AI module via JavaScript
helper = polyglot.eval(language='js', string='''
  import llm from "elide:llm";
  export function infer(prompt) {
    const model = llm.huggingface({
      repo: "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF",
      name: "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf"
    });
    const params = llm.params();
    return llm.inferSync(params, model, prompt);
  }
''')

# Use it
result = helper.infer("What is Elide?")
print(result)
EOF
        destination = "local/inference.py"
      }
      
      resources {
        cpu    = 1000
        memory = 2048
      }
    }
  }
}
