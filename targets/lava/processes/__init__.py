"""Lava processes and process models. Lava executes every module here to discover models: no import-time side effects."""
