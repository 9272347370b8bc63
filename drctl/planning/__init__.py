"""Placement and planning: where each VM may go, with reasons, and in which waves.

Pure (no store, hypervisor, threads or subprocesses). May import model only. See docs/planning.md.
"""
