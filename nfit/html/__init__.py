"""HTML pages of results: ``report.html`` beside every job's report.json, and a batch's
``index.html``. Each page is one file that carries its pictures, data, style and script,
so it opens from disk, offline, and makes no request.

    from nfit.html import write_html_report
    write_html_report(Path("runs/kodim23"))      # rebuilds the page from the folder
"""

from __future__ import annotations

from nfit.html.batch_index import INDEX_FILE, write_batch_index
from nfit.html.report import HTML_FILE, missing_outputs, rerun_command, write_html_report

__all__ = ["HTML_FILE", "INDEX_FILE", "missing_outputs", "rerun_command", "write_batch_index",
           "write_html_report"]
