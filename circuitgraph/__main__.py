"""``python -m circuitgraph [overrides]``: a Hydra run (see ``circuitgraph.cli.main``)."""

from circuitgraph.cli.main import main

if __name__ == "__main__":
    main()
