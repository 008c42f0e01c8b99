"""Target VMs: definitions (define), runtime state (state), start/stop (runtime), removal (clean),
and the serial console (attach)."""
