"""Offline generation on Ray Data: every prompt x mix of a job YAML through a pool of engine actors.

config.py validates the job YAML; plan.py turns input rows x mixes into plan rows (pure, no Ray); pipeline.py runs
the plan on Ray Data and checks the output; commands.py is `lerpray batch`. Ray is imported by pipeline.py only.
"""
