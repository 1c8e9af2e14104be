"""The score report: report.json's schema (`schema.py`), report.md (`markdown.py`), plots
(`plots.py`). Writing the folder is `adapt.score.io.write_report`."""
