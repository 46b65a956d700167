import sys

from bioprop.cli import main

sys.exit(main())
