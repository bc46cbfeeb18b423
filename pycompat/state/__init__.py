"""What the server keeps between requests: stored responses, conversations and
chat completions.

``store.py`` is the interface the routes use (records, their ordered items,
pages); ``sqlite.py`` implements it on one SQLite file. The routes never see
SQL, so another implementation (a database several replicas share) can take
its place without touching them.
"""
