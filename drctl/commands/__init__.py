"""Click command groups, one module per area; `drctl/cli.py` wires them together."""
