"""Hydra config files of circuitgraph's command line (a package so that Hydra can read them
with importlib.resources from an installed wheel as well as from a checkout)."""
