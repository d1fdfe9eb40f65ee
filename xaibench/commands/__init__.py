"""The commands: ``cli`` (argument parsing, exit codes), ``run`` (``xaibench run``), ``loop``
(``xaibench loop``), ``data``, ``audit`` and ``export``, and ``outputs`` (where and how they write).
"""
