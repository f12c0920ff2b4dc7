"""Result tables, the Markdown/HTML report and its plots."""
