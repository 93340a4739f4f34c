"""Lava target: lower a PMSM NIR graph to Lava processes and simulate it."""
