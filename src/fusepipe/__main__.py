"""`python -m fusepipe STAGE …`: the command line (fusepipe.cli)."""

from fusepipe.cli import main

if __name__ == "__main__":  # not when a spawned worker (the toy build's pool) imports it
    main()
