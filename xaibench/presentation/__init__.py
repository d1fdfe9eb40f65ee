"""Presentation: tables (``leaderboard``, ``loop_tables``), ``latex``, ``figures`` and the HTML ``report``.

They draw from result frames, records and arrays only: nothing here plans, runs a stage or builds a
component (``tests/test_layers.py`` checks that no import reaches the pipeline's engine).
"""
