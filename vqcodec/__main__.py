"""``python -m vqcodec``: the same command line as the ``vqcodec`` console script."""

from vqcodec.cli import main

if __name__ == "__main__":
    main()
