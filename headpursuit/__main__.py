"""`python -m headpursuit [overrides]` runs the Hydra app (see headpursuit/run.py and conf/)."""

from headpursuit.run import main

if __name__ == "__main__":
    main()
