"""``python -m retailsync``: the same command as the ``retailsync`` script."""

from retailsync.cli import main

main()
