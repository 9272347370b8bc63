"""The migration runner: executes intents.

Claims an intent, runs the pre-checks, live-migrates (with stall escalation from the pure
`convergence` rules) or restarts, verifies the VM runs exactly once, retries. May import model,
control.intents, store and hypervisor seams; never the lab. See docs/runner.md.
"""
