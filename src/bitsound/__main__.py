"""``python -m bitsound``: the command line, also as the module torchrun starts
(``torchrun --nproc-per-node N -m bitsound train ...``)."""

import sys

from bitsound.cli import main

if __name__ == "__main__":
    sys.exit(main())
