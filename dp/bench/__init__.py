"""Benchmarks: each writes bench/results/<name>.json plus a markdown table.

Run ``dp-bench`` (all) or ``dp-bench dataset``. Figures are medians of repeats and
always carry the machine they ran on (``machine_info``).
"""
