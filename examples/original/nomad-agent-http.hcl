# The original Elide task driver's agent configuration with one change for
# its HTTP server example (http-server.nomad): "http" (the network) is
# granted besides the README's io and env, since the daemon's kernel rules
# deny a server its listening socket otherwise.
# Install the plugin under that name: a link named `elide` in plugin_dir
# pointing at nomad-driver-elide (README: "Installing into a real Nomad
# agent"). elide-run reads the plugin block with --agent-config; nothing
# answers at /tmp/elide-daemon.sock there, so it starts a private daemon.
plugin_dir = "/path/to/elide-task-driver/build/plugins"

plugin "elide" {
  config {
    daemon_socket = "/tmp/elide-daemon.sock"

    session_config {
      context_pool_size  = 10
      enabled_languages  = ["python", "javascript", "typescript"]
      enabled_intrinsics = ["io", "env", "http"]
      memory_limit_mb    = 512
      enable_ai          = false
    }
  }
}
