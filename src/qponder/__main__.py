import sys

from qponder.cli import main

sys.exit(main())
