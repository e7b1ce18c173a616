"""Submitting jobs to a Ray cluster through the Ray Jobs API.

spec.py stages a job's files and builds its entrypoint and runtime_env (plain dicts, no Ray); commands.py is
`lerpray submit` and `lerpray jobs status|logs|stop`, which hand them to `ray.job_submission.JobSubmissionClient`.
"""
