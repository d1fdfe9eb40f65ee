"""xaibench's built-in plugins, registered through the ``xaibench`` entry-point group like any other."""
