import sys

from bgwork.cli import main

sys.exit(main())
