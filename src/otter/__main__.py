"""``python -m otter``: the same as the ``otter`` command."""

from .cli import main

if __name__ == "__main__":
    main()
