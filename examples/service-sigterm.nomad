# A long-running service that traps SIGTERM (its kill_signal), says
# goodbye and exits 0. Stop it with Ctrl-C: elide-run sends StopTask with
# kill_signal = "SIGTERM" and kill_timeout = "10s", as Nomad would.
#   elide-run examples/service-sigterm.nomad
job "service-sigterm" {
  type = "service"

  group "svc" {
    task "server" {
      driver       = "elide"
      kill_signal  = "SIGTERM"
      kill_timeout = "10s"

      config {
        language = "python"
        code     = <<EOF
import signal, sys, time

def goodbye(signum, frame):
    print("goodbye: got SIGTERM, shutting down cleanly", flush=True)
    sys.exit(0)

signal.signal(signal.SIGTERM, goodbye)
print("ready: serving until stopped", flush=True)
while True:
    time.sleep(0.2)
EOF
      }
    }
  }
}
