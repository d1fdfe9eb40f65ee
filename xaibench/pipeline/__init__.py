"""The pipeline: from a grid file to scored cells.

``grid`` (the validated grid file) → ``plan`` (typed stage specs keyed by content) → ``engine`` (a run
folder: store, lock, executor) running ``stages`` (each stage kind's work, writing ``artifacts``, with
``training``) → ``scoring`` (cells and loop rounds, with ``metrics``, ``faithfulness``, ``sanity`` and
``stats``; every metric declared in ``schema``), ``results`` (cell rows read back as frames and
summarised over seeds) and ``exhibits`` (what figures show). ``records`` holds the typed rows passed
between them and to the presentation. A dry run's cost estimate: ``estimate`` counts a plan's work by stage
kind, ``calibration`` times its units on this machine.
"""
