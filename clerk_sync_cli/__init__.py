"""clerk-sync: make a Postgres ``users`` table match Clerk again."""

__version__ = "0.1.0"
