"""`kdmobile bench`: latency, memory, size and task metric of bundles (and teachers), with CI gates.

runner.py measures (torch only behind lazy imports, for teachers and un-exported students), report.py turns the
measurements into report.json / report.md / latency_vs_accuracy.png, cli.py is the verb.
"""
