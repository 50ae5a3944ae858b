# The original Elide task driver's "Example 2: HTTP Server", in its shape:
# a service whose python script gets `--port ${NOMAD_PORT_http}` and
# LOG_LEVEL from the task config and answers /health. Three changes, each
# because the original cannot run as written anywhere:
#   * the script is written by a template (the original downloads
#     https://example.com/app.tar.gz with an artifact block);
#   * `port "http" {}` without `to = 8080`: the elide driver has no network
#     namespace, so with `to` Nomad would tell every allocation to bind
#     8080 on the host; without it each gets its own dynamic port;
#   * count = 1 (elide-run runs one allocation per group; it warns).
# The service block stays; elide-run ignores it with a warning.
#   elide-run --agent-config examples/original/nomad-agent-http.hcl examples/original/http-server.nomad
# (the README's agent config with "http" granted: a server needs the network)
#   curl http://127.0.0.1:<port>/health      # the port is printed at start
job "elide-web" {
  datacenters = ["dc1"]
  type = "service"

  group "web" {
    count = 1

    network {
      port "http" {}
    }

    task "server" {
      driver = "elide"

      config {
        script   = "local/server.py"
        language = "python"  # Must match one of session's enabled_languages
        args     = ["--port", "${NOMAD_PORT_http}"]

        env = {
          "LOG_LEVEL" = "info"
        }
      }

      template {
        destination = "local/server.py"
        data        = <<EOF
import argparse, json, os, signal, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
port = parser.parse_args().port
log_level = os.environ.get("LOG_LEVEL", "warning")

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            body = json.dumps({"status": "ok", "port": port}).encode()
            self.send_response(200)
        else:
            body = json.dumps({"error": "not found", "path": self.path}).encode()
            self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        if log_level == "info":
            print("request:", fmt % args, flush=True)

server = ThreadingHTTPServer(("", port), Handler)

def stop(signum, frame):
    print("stopping: got", signal.Signals(signum).name, flush=True)
    server.server_close()
    sys.exit(0)

signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGTERM, stop)
print(f"serving /health on port {port} (log level {log_level})", flush=True)
server.serve_forever()
EOF
      }

      service {
        name = "elide-web"
        port = "http"

        check {
          type     = "http"
          path     = "/health"
          interval = "10s"
          timeout  = "2s"
        }
      }

      resources {
        cpu    = 500
        memory = 512
      }
    }
  }
}
