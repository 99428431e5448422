import sys

from supervise.cli import main

sys.exit(main())
