"""What every part shares. Entry points: `params.load` / `params.declared` (params.yaml, checked) and
`settings.mode_settings` / `settings.section` (typed settings), `paths` (every file, named once),
`stage.run_main` (a stage's main: one-line errors), `publish.outputs` (outputs written whole),
`files`, `errors.UserError`, `devices.pick_device`, `figures`, and `tree_guard` (the check before DVC)."""
