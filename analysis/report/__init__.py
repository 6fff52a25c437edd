"""The self-contained HTML report of a run or a compare folder; html.py is its only markup writer."""
