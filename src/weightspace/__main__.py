"""``python -m weightspace``: the command-line interface."""

from weightspace.cli import main

if __name__ == "__main__":
    main()
