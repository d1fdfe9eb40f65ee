"""The plugin author's kit: what a plugin is written against and checked with.

``hookspecs`` (the hooks a plugin implements), ``contracts`` (the data a plugin receives and returns, and
their validators), ``registry`` (finding and building components), ``testing`` (conformance checks for a
plugin's own test suite) and the helpers the built-in plugins use: ``images`` (reading tiles and masks),
``splits`` (grouped stratified splits), ``download`` (verified downloads and archives) and ``models``
(saving, loading and addressing the layers of networks). The kit imports nothing from the pipeline, the
presentation or the commands; the older paths (``xaibench.contracts`` and so on) name the same modules.
"""
