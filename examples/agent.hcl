# A Nomad agent (client) configuration loading nomad-driver-elide.
# Copy the plugin binary into plugin_dir; run the daemon next to it
# (see elide-daemon.service), then `nomad agent -config agent.hcl`.
# elide-run reads the plugin block of this file with --agent-config.
data_dir   = "/opt/nomad/data"
plugin_dir = "/opt/nomad/plugins"

client {
  enabled = true
}

plugin "nomad-driver-elide" {
  config {
    daemon_socket = "/run/elide/daemon.sock"
    status_mode   = "auto"
    poll_interval = "1s"

    session_config {
      context_pool_size  = 4
      enabled_languages  = ["python", "javascript"]
      enabled_intrinsics = ["console", "fs.read"]
      memory_limit_mb    = 512
      enable_ai          = false
    }
  }
}
