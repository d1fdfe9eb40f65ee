"""An example xaibench plugin: one background mask (``checkerboard``) and one seeder (``centroid``).

This module is what the ``xaibench`` entry point names. It holds only the hook implementations, which
register a name and a class; the classes live in their own modules, and heavy libraries (torch) are
imported inside the methods that use them, so listing plugins stays fast.
"""

from xaibench import hookimpl

from .masks import CheckerboardMask
from .seeders import CentroidSeeder


@hookimpl
def register_masks(register):
    register("checkerboard", CheckerboardMask)


@hookimpl
def register_seeders(register):
    register("centroid", CentroidSeeder)
