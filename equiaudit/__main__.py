"""``python -m equiaudit`` runs the command line, e.g. ``torchrun --nproc-per-node 2 -m equiaudit scan ...``.

The core never imports the command line; only running this module as a program does.
"""

if __name__ == "__main__":
    from equiaudit.cli import main

    main()
