"""`kdmobile bench`: latency, memory, size and task metric of bundles (and teachers), with CI gates.

One module per concern (torch only behind lazy imports, for teachers and un-exported students): settings.py (the
pydantic settings and their defaults), discover.py (run directories, bundles, the plan), subjects.py (a bundle or
a PyTorch model as one interface), timing.py (the one timing helper), memory.py (the fresh-process memory probe),
measure.py (subjects into report rows), report.py (report.json / report.md / latency_vs_accuracy.png), cli.py
(the verb).
"""
