import sys

from fieldlink.cli import main

sys.exit(main())
