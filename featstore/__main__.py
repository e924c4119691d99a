"""``python -m featstore`` (also what torchrun runs)."""

from featstore.cli import main

if __name__ == "__main__":
    main()
