"""The data audit (stage `audit`): suspect labels, near-duplicates and outliers, reported only.
`findings.audit_data` reads every image's features and hash, `findings.find_all` runs the methods of
`suspects` on them, and `findings.write_tables` / `suspects_figure` / `audit_metrics` report them."""
