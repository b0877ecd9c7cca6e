"""`python -m natrelay.tools.cli`: the same as the `natrelay` command."""

from natrelay.tools.cli import main

main()
