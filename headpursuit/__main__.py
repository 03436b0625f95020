"""`python -m headpursuit [overrides]` runs the Hydra app (see headpursuit/app/run.py and conf/)."""

from headpursuit.app.run import main

if __name__ == "__main__":
    main()
