"""Review of a change and of experiments, read from git (no dvc pull): the pull-request report
(`report.build_report`: real-or-noise per mode, then params, metrics and plots from `dvc_diff`), each
mode's accuracy over seeds run as experiments (`seeds`), and one paired verdict over the modes of
several revisions or experiments (`cross_verdict`). `python -m stages.report` is their command."""
