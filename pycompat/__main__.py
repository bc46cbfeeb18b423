import sys

from pycompat.cli import main

sys.exit(main())
