"""Health watching: probes, pure grading with hysteresis, the agent that heartbeats.

`grading` is pure (no store, no hypervisor, no threads); `probes` reads the host; `inventory`
publishes what runs here; `agent` is the daemon. May import model, config, store and hypervisor
seams; never the control loops or the lab. See docs/health.md.
"""
