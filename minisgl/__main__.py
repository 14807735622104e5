"""`python -m minisgl` 等同于 `minisgl` 命令。Same as the `minisgl` command."""
import sys

from minisgl.cli import main

sys.exit(main())
