"""`cxr-effusion validate`: a model on a site's own labelled scans, scored by the service's own code, reported.

inputs (labels from folders or a CSV) -> scoring (local core or a running service) -> metrics and
summary (pure functions) -> plots and report_html / report.json / predictions.csv (command).
"""
