"""Bundled agents: A2C on imagined segments and the AGD-MBRL training loop."""
