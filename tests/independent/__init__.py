"""Release generators written independently of the project's demo writers (see each module).

They know only the published layouts and what the release readers accept, so
a model tested on them cannot lean on assumptions it shares with its own demo data.
"""
