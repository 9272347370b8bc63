"""`python -m drctl.cli`: the drctl command."""
from drctl.cli.main import main

main()
