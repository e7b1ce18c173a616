"""`lerpray quickstart`: train, publish and serve two sentiment anchors on this machine, then query every mix.

config.py turns the flags into a Plan; pipeline.py runs it stage by stage (steps.py holds each stage's work);
tiny.py builds the --tiny run's model; commands.py is the command. Ray is imported by the stages that use it.
"""
