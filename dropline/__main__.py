import sys

from dropline.cli import main

sys.exit(main())
