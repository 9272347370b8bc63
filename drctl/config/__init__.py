"""Configuration files: `/etc/drctl/drctl.yaml` parsed into typed settings.

Owns the agent and controller sections and their field readers; errors name file:line and field.
May import model, policy's YAML reader and the probe specs of health.probes (an agent's probe
list is validated where probes are defined); no I/O beyond reading the file.
"""
