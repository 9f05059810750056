"""Entry point for ``python3 -m pyxen.image`` (same CLI as ``pyxen-image``)."""

import sys

from pyxen.image.build import main

sys.exit(main())
