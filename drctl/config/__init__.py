"""Configuration files: `/etc/drctl/drctl.yaml` parsed into typed settings.

Owns the agent and controller sections and their field readers; errors name file:line and field.
May import model and policy's YAML reader; no I/O beyond reading the file.
"""
