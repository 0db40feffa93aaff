"""Tools around a training run, not part of a training step: `bench` (the standard workload, timed), `plot`
(runs' curves side by side), `diagnose` (versions, devices, Ray cluster, the config's checks) and `torchrun`
(the same training step driven by torchrun instead of Ray, for GPU measurement). The core package never imports
them.
"""
