"""A deterministic whole-cluster simulator: the production agent, controller and runner
code, stepped by a scheduler on simulated time against a simulated world (docs/simulator.md)."""
