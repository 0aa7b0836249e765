"""`planner report`: HTML (html.py) with matplotlib figures (plots.py) and Chrome traces (trace.py).

Importing this package is cheap; ``html`` and ``plots`` import pandas and matplotlib and are
loaded only when a report is written.
"""
